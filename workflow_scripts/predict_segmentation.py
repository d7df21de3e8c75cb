"""Rule predict_segmentation: label maps of the evaluation split from a trained network."""

from wsss_core.segmentation.predict import predict_split
from wsss_core.workflow import gpu_job, logged

with logged(snakemake.log[0]), gpu_job(snakemake):
    p = snakemake.params
    summary = predict_split(
        snakemake.input.model,
        snakemake.input.root,
        p.split,
        snakemake.output[0],
        scales=p.scales,
        flip=p.flip,
        crf=p.crf,
        threads=snakemake.threads,
        workers=snakemake.threads,
    )
    print(summary)
