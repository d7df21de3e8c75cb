"""Rule random_walk: walk the CAMs over AffinityNet's affinities into a refined CAM store."""

from wsss_core.refine.propagate import propagate_split
from wsss_core.workflow import gpu_job, logged

with logged(snakemake.log[0]), gpu_job(snakemake):
    summary = propagate_split(
        snakemake.input.cams,
        snakemake.input.root,
        snakemake.params.split,
        snakemake.input.model,
        None,  # no PSA label PNGs: rule make_pseudo_labels labels the walked store
        snakemake.output.cams,
        **snakemake.params.walk,
        # one process per thread (the sparse walk is single-threaded work per image)
        workers=snakemake.threads,
        threads=1,
    )
    print(summary)
