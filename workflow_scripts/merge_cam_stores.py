"""Rules merge_erasing_rounds (pixel-wise maximum of the rounds' CAM stores) and combine_with_baseline
(geometric mean of the co-attention and baseline CAM stores)."""

from wsss_core.cams.merge import merge_cam_stores
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    summary = merge_cam_stores(
        list(snakemake.input.stores),
        snakemake.input.root,
        snakemake.params.split,
        snakemake.output[0],
        how=snakemake.params.how,
    )
    print(summary)
