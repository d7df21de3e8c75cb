"""Rule train_affinity: train AffinityNet on the confident labels."""
from wsss_core.train.affinity import train_affinity
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    summary = train_affinity(
        snakemake.input.root,
        p.split,
        snakemake.input.labels,
        out_model=snakemake.output.model,
        out_history_csv=snakemake.output.history,
        checkpoint_dir=p.checkpoint_dir,
        **p.train,
        threads=snakemake.threads,
    )
    print(summary)
