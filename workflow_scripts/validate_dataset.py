"""Rule validate_dataset: check the labels, images or masks of one split."""

from wsss_core.data.validate import validate_part
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    validate_part(
        snakemake.input.root,
        p.split,
        p.kind,
        require_masks=p.require_masks,
        out_json=snakemake.output[0],
        workers=snakemake.threads,
    )
