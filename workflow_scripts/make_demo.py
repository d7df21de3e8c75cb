"""Rule demo_dataset: write the synthetic demo dataset."""

from wsss_core.data.demo import generate
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    summary = generate(snakemake.output[0], workers=snakemake.threads, **snakemake.params.demo)
    print(summary)
