# Pseudo-label stage: CAMs + the chosen background threshold -> dense-CRF-refined label maps with 255 where unsure.

PSEUDO = config["pseudo_labels"]
PSEUDO_DIR = RESULTS / "pseudo_labels" / MAIN_CAMS


rule make_pseudo_labels:
    """Confident foreground / background from the CAMs, refined by dense CRF; palette PNGs."""
    input:
        cams=CAM_DIR / MAIN_CAMS / f"{CAM_SPLIT}.h5",
        best=expand(rules.evaluate_cams.output.best, cams=MAIN_CAMS)[0],
        root=dataset_root(),
        code=code("pseudo/labels.py"),
    output:
        directory(PSEUDO_DIR / CAM_SPLIT),
    log:
        LOGS / "pseudo_labels" / f"make_{MAIN_CAMS}.log",
    benchmark:
        BENCH / "pseudo_labels" / f"make_{MAIN_CAMS}.tsv"
    conda:
        "../envs/wsss.yaml"
    # one process per thread: dense CRF is single-threaded
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        split=CAM_SPLIT,
        pseudo=PSEUDO,
        crf=config["crf"] if PSEUDO["crf"] else None,
    script:
        "../workflow_scripts/make_pseudo_labels.py"


rule evaluate_pseudo_labels:
    """mIoU of the confident pixels and coverage (share of pixels not 255) against the masks."""
    input:
        labels=rules.make_pseudo_labels.output[0],
        root=dataset_root(),
        code=code("label_maps.py"),
    output:
        per_class=report(
            PSEUDO_DIR / "eval" / "per_class_iou.csv",
            category="Pseudo labels",
            caption="../report/pseudo_labels.rst",
        ),
        summary_row=RESULTS / "summary_rows" / f"pseudo_labels_{MAIN_CAMS}.csv",
    log:
        LOGS / "pseudo_labels" / f"evaluate_{MAIN_CAMS}.log",
    benchmark:
        BENCH / "pseudo_labels" / f"evaluate_{MAIN_CAMS}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        stage="pseudo_labels",
        split=CAM_SPLIT,
        method=MAIN_CAMS,
    script:
        "../workflow_scripts/evaluate_label_maps.py"
