"""Rule download_archive: resumable, md5-checked download within a wall-clock deadline."""

from wsss_core.data.download import fetch
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    fetch(
        p.url,
        snakemake.output[0],
        md5=p.md5,
        retries=p.retries,
        timeout_s=p.timeout_s,
        deadline_s=p.deadline_s,
        deadline_name="config key voc12.deadline_s",
    )
