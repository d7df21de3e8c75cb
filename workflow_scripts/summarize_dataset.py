"""Rule summarize_dataset: describe the dataset whose parts rule validate_dataset checked."""

from wsss_core.data.validate import summarize_dataset
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    summarize_dataset(
        snakemake.input.root,
        train_split=snakemake.params.train_split,
        eval_split=snakemake.params.eval_split,
        summary_json=snakemake.output.summary,
        class_counts_csv=snakemake.output.class_counts,
    )
