# The per-dataset summary table: one row per stage and method, from each stage's own row file.


rule summary:
    """Concatenate the stages' summary rows into results/<name>/summary.csv, in pipeline order."""
    input:
        rows=[
            *expand(rules.evaluate_cams.output.summary_row, cams=CAM_STORES),
            *expand(rules.evaluate_pseudo_labels.output.summary_row, recipe=RECIPES),
            *expand(rules.evaluate_segmentation.output.summary_row, labels=SEG_RUNS),
        ],
        code=code("results.py"),
    output:
        report(
            RESULTS / "summary.csv",
            category="Summary",
            caption="../report/summary.rst",
        ),
    log:
        LOGS / "summary.log",
    benchmark:
        BENCH / "summary.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        # every row on the reference's split also reads as a percentage of its mIoU
        reference=REFERENCE if EVAL["fully_supervised"] else None,
    script:
        "../workflow_scripts/summary.py"


rule cam_summary:
    """The CAM rows alone (every classifier variant and CAM store) in results/<name>/cam_summary.csv: the
    target for comparing classifiers without running the later stages (snakemake cam_summary).
    """
    input:
        rows=expand(rules.evaluate_cams.output.summary_row, cams=CAM_STORES),
        code=code("results.py"),
    output:
        report(
            RESULTS / "cam_summary.csv",
            category="Summary",
            caption="../report/summary.rst",
        ),
    log:
        LOGS / "cam_summary.log",
    benchmark:
        BENCH / "cam_summary.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        reference=None,
    script:
        "../workflow_scripts/summary.py"
