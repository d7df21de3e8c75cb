"""Rule affinity_labels: confident labels from the CAMs for AffinityNet training."""

from wsss_core.refine.affinity_labels import make_affinity_labels
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    summary = make_affinity_labels(
        snakemake.input.cams,
        snakemake.input.root,
        snakemake.params.split,
        snakemake.output[0],
        **snakemake.params.alphas,
        crf=snakemake.params.crf,
        saliency_gate=snakemake.params.saliency_gate,
        saliency_h5=snakemake.input.get("saliency"),
        workers=snakemake.threads,
    )
    print(summary)
