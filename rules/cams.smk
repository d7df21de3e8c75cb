# CAM stage: multi-scale + flip CAMs into HDF5, then their quality against the masks.

CAMS = config["cams"]
CAM_DIR = RESULTS / "cams" / CLS["method"]
CAM_SPLIT = DATASET["train_split"]


rule infer_cams:
    """CAMs of every training image, restricted to its labelled classes, max-normalised."""
    input:
        model=CLS_DIR / "model.pt",
        root=dataset_root(),
        code=code("cams/infer.py"),
    output:
        CAM_DIR / f"{CAM_SPLIT}.h5",
    log:
        LOGS / "cams" / f"infer_{CLS['method']}.log",
    benchmark:
        BENCH / "cams" / f"infer_{CLS['method']}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        split=CAM_SPLIT,
        cams=CAMS,
    script:
        "../workflow_scripts/infer_cams.py"


rule evaluate_cams:
    """mIoU against the masks for every background threshold; the best one feeds later stages."""
    input:
        cams=CAM_DIR / f"{CAM_SPLIT}.h5",
        root=dataset_root(),
        code=code("cams/evaluate.py"),
    output:
        sweep=report(
            CAM_DIR / "eval" / "threshold_sweep.csv",
            category="CAMs",
            caption="../report/threshold_sweep.rst",
        ),
        plot=report(
            CAM_DIR / "eval" / "threshold_sweep.png",
            category="CAMs",
            caption="../report/threshold_sweep.rst",
        ),
        best=CAM_DIR / "eval" / "best_threshold.json",
        per_class=report(
            CAM_DIR / "eval" / "per_class_iou.csv",
            category="CAMs",
            caption="../report/per_class_iou.rst",
        ),
        summary_row=RESULTS / "summary_rows" / f"cams_{CLS['method']}.csv",
    log:
        LOGS / "cams" / f"evaluate_{CLS['method']}.log",
    benchmark:
        BENCH / "cams" / f"evaluate_{CLS['method']}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        split=CAM_SPLIT,
        method=CLS["method"],
        thresholds=CAMS["eval_thresholds"],
    script:
        "../workflow_scripts/evaluate_cams.py"
