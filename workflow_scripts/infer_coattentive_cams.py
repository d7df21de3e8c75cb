"""Rule infer_coattentive_cams: single- and multi-round CAMs of the co-attention classifier into HDF5."""

from wsss_core.cams.coattention import coattentive_cams
from wsss_core.workflow import gpu_job, logged

with logged(snakemake.log[0]), gpu_job(snakemake):
    cams = snakemake.params.cams
    summary = coattentive_cams(
        snakemake.input.root,
        snakemake.params.split,
        snakemake.input.model,
        snakemake.output.single,
        snakemake.output.multi,
        scales=cams["scales"],
        flip=cams["flip"],
        references=cams["references"],
        seed=cams["seed"],
        batch_size=cams["batch_size"],
        num_workers=cams["num_workers"],
        threads=snakemake.threads,
    )
    print(summary)
