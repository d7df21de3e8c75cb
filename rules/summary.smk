# The per-dataset summary table: one row per stage and method, from each stage's own row file.


rule summary:
    """Concatenate the stages' summary rows into results/<name>/summary.csv."""
    input:
        rows=[rules.evaluate_cams.output.summary_row],
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
    script:
        "../workflow_scripts/summary.py"
