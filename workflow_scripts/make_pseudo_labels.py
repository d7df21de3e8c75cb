"""Rule make_pseudo_labels: CAMs + background threshold -> CRF-refined pseudo-label PNGs."""

import json

from wsss_core.pseudo.labels import make_pseudo_labels
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    threshold = p.pseudo["threshold"]
    if threshold == "best":
        with open(snakemake.input.best) as f:
            threshold = json.load(f)["threshold"]
    summary = make_pseudo_labels(
        snakemake.input.cams,
        snakemake.input.root,
        p.split,
        snakemake.output[0],
        threshold=float(threshold),
        fg_margin=p.pseudo["fg_margin"],
        bg_margin=p.pseudo["bg_margin"],
        crf=p.crf,
        workers=snakemake.threads,
    )
    print(summary)
