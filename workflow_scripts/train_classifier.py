"""Rules train_classifier and train_erasing_round: train a classifier variant on the training split."""

from wsss_core.train.classifier import train_classifier
from wsss_core.train.distributed import run_training
from wsss_core.workflow import gpu_job, logged

with logged(snakemake.log[0]), gpu_job(snakemake) as gpus:
    p = snakemake.params
    # one process per GPU the job holds (DistributedDataParallel when several)
    summary = run_training(
        train_classifier,
        gpus,
        snakemake.input.root,
        p.split,
        dict(p.cfg),
        out_model=snakemake.output.model,
        out_history_csv=snakemake.output.history,
        checkpoint_dir=p.checkpoint_dir,
        # adversarial-erasing rounds after the first: the earlier rounds' CAMs
        erase_cams=list(getattr(snakemake.input, "erase", [])),
        # classifier.coattention.warm_start: the trained baseline to start from
        init_model=next(iter(getattr(snakemake.input, "init", [])), None),
        threads=snakemake.threads,
    )
    print(summary)
