"""Rule summary: gather the stages' rows into the dataset's summary.csv."""

from wsss_core.results import collect_summary
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    table = collect_summary(list(snakemake.input.rows), snakemake.output[0], reference=snakemake.params.reference)
    print(table.to_string(index=False))
