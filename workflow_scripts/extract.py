"""Rule extract_archive: safe, all-or-nothing extraction."""

from wsss_core.data.download import safe_extract
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    safe_extract(snakemake.input.archive, snakemake.output[0])
