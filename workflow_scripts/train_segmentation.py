"""Rule train_segmentation: DeepLab on the pseudo labels, or on the GT masks for the reference."""

from wsss_core.train.segmentation import train_segmentation
from wsss_core.train.distributed import run_training
from wsss_core.workflow import gpu_job, logged

with logged(snakemake.log[0]), gpu_job(snakemake) as gpus:
    p = snakemake.params
    # one process per GPU the job holds (DistributedDataParallel when several)
    summary = run_training(
        train_segmentation,
        gpus,
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
