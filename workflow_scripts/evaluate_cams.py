"""Rule evaluate_cams: background-threshold sweep of CAM mIoU against the masks."""

from wsss_core.cams.evaluate import evaluate_cams, threshold_grid
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    t = snakemake.params.thresholds
    out = snakemake.output
    evaluate_cams(
        snakemake.input.cams,
        snakemake.input.root,
        snakemake.params.split,
        thresholds=threshold_grid(t["min"], t["max"], t["step"]),
        out_csv=out.sweep,
        out_png=out.plot,
        out_best_json=out.best,
        out_per_class_csv=out.per_class,
        method=snakemake.params.method,
        summary_row_csv=out.summary_row,
    )
