"""Rule train_affinity: train AffinityNet on the confident labels."""

from wsss_core.train.affinity import train_affinity
from wsss_core.train.distributed import run_training
from wsss_core.workflow import gpu_job, logged

with logged(snakemake.log[0]), gpu_job(snakemake) as gpus:
    p = snakemake.params
    # one process per GPU the job holds (DistributedDataParallel when several)
    summary = run_training(
        train_affinity,
        gpus,
        snakemake.input.root,
        p.split,
        dict(p.cfg),
        label_dir=snakemake.input.labels,
        out_model=snakemake.output.model,
        out_history_csv=snakemake.output.history,
        checkpoint_dir=p.checkpoint_dir,
        threads=snakemake.threads,
    )
    print(summary)
