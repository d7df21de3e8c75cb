"""Rule make_saliency_pseudo_labels: saliency (+ CAMs) -> pseudo-label PNGs (the MCIS recipe, or saliency alone)."""

from wsss_core.pseudo.saliency_labels import make_saliency_only_labels, make_saliency_pseudo_labels
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    if snakemake.wildcards.recipe == "saliency_only":
        summary = make_saliency_only_labels(
            snakemake.input.saliency,
            snakemake.input.root,
            p.split,
            snakemake.output[0],
            sal_threshold=p.recipe["sal_threshold"],
            workers=snakemake.threads,
        )
    else:
        summary = make_saliency_pseudo_labels(
            snakemake.input.cams,
            snakemake.input.saliency,
            snakemake.input.root,
            p.split,
            snakemake.output[0],
            **p.recipe,
            crf=p.crf,
            walked_h5=snakemake.input.walked or None,
            workers=snakemake.threads,
        )
    print(summary)
