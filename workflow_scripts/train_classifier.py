"""Rule train_classifier: train the CAM classifier on the training split."""
from wsss_core.train.classifier import train_classifier
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    summary = train_classifier(
        snakemake.input.root,
        p.split,
        dict(p.cfg),
        out_model=snakemake.output.model,
        out_history_csv=snakemake.output.history,
        checkpoint_dir=p.checkpoint_dir,
        threads=snakemake.threads,
    )
    print(summary)
