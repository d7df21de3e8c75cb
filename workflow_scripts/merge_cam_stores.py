"""Rule merge_erasing_rounds: the adversarial-erasing rounds' CAM stores, merged by a pixel-wise maximum."""

from wsss_core.cams.merge import merge_cam_stores
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    summary = merge_cam_stores(
        list(snakemake.input.rounds),
        snakemake.input.root,
        snakemake.params.split,
        snakemake.output[0],
    )
    print(summary)
