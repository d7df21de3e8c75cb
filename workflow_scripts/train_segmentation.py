"""Rule train_segmentation: DeepLab on the pseudo labels, or on the GT masks for the reference."""
from wsss_core.train.segmentation import train_segmentation
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    summary = train_segmentation(
        snakemake.input.root,
        p.split,
        dict(p.cfg),
        label_dir=snakemake.input.labels or None,  # empty for the fully-supervised reference: GT masks
        out_model=snakemake.output.model,
        out_history_csv=snakemake.output.history,
        checkpoint_dir=p.checkpoint_dir,
        threads=snakemake.threads,
    )
    print(summary)
