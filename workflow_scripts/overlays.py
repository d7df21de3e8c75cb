"""Rule overlays: image | CAM | pseudo label | prediction | GT for a few training images."""

from wsss_core.report.overlays import render_overlays
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    shown = render_overlays(
        snakemake.input.root,
        snakemake.params.split,
        snakemake.output[0],
        cam_h5=snakemake.input.cams,
        pseudo_dir=snakemake.input.pseudo_labels,
        model_path=snakemake.input.model[0],
        n_images=snakemake.params.n_images,
    )
    print("images shown:", ", ".join(shown))
