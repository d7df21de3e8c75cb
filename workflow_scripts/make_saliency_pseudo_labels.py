"""Rule make_saliency_pseudo_labels: CAMs + saliency -> pseudo-label PNGs (the MCIS recipe)."""
from wsss_core.pseudo.saliency_labels import make_saliency_pseudo_labels
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    summary = make_saliency_pseudo_labels(
        snakemake.input.cams,
        snakemake.input.saliency,
        snakemake.input.root,
        snakemake.params.split,
        snakemake.output[0],
        **snakemake.params.recipe,
        crf=snakemake.params.crf,
        workers=snakemake.threads,
    )
    print(summary)
