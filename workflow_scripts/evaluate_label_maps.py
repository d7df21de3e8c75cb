"""Rules evaluate_pseudo_labels and evaluate_segmentation: a folder of label PNGs against the masks."""

from wsss_core.label_maps import evaluate_label_dir
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    row = evaluate_label_dir(
        snakemake.input.labels,
        snakemake.input.root,
        p.split,
        stage=p.stage,
        method=p.method,
        out_per_class_csv=snakemake.output.per_class,
        summary_row_csv=snakemake.output.summary_row,
        workers=snakemake.threads,
    )
    print(row)
