"""Rule make_saliency: a saliency map per training image into HDF5."""

from wsss_core.pseudo.saliency import make_saliency
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    s = snakemake.params.saliency
    summary = make_saliency(
        snakemake.input.root,
        snakemake.params.split,
        snakemake.output[0],
        source=s["source"],
        device=s["device"],
        threads=max(s["threads"], snakemake.threads),
    )
    print(summary)
