"""Rule infer_cams: multi-scale + flip CAMs of the training split into HDF5."""

from wsss_core.cams.infer import infer_cams
from wsss_core.workflow import gpu_job, logged

with logged(snakemake.log[0]), gpu_job(snakemake):
    cams = snakemake.params.cams
    summary = infer_cams(
        snakemake.input.root,
        snakemake.params.split,
        snakemake.input.model,
        snakemake.output[0],
        scales=cams["scales"],
        flip=cams["flip"],
        batch_size=cams["batch_size"],
        num_workers=cams["num_workers"],
        threads=snakemake.threads,
    )
    print(summary)
