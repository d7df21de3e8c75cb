# Classifier stage: learn a CAM classifier from the image-level labels of the training split.

CLS = config["classifier"]
CLS_DIR = RESULTS / "classifier" / CLS["method"]


rule train_classifier:
    """Backbone + 1x1 class conv + GAP, multilabel soft-margin loss; checkpointed every epoch."""
    input:
        # a gate (the dataset passed validation), not data: re-validating must not retrain
        dataset_summary=ancient(RESULTS / "data" / "dataset_summary.json"),
        root=dataset_root(),
        code=code("train/classifier.py"),
    output:
        model=CLS_DIR / "model.pt",
        history=report(
            CLS_DIR / "train_history.csv",
            category="Classifier",
            caption="../report/train_history.rst",
        ),
    log:
        LOGS / "classifier" / f"train_{CLS['method']}.log",
    benchmark:
        BENCH / "classifier" / f"train_{CLS['method']}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        cfg=CLS,
        split=DATASET["train_split"],
        # not an output: survives a kill so that --rerun-incomplete resumes training
        checkpoint_dir=CLS_DIR / "checkpoints",
    script:
        "../workflow_scripts/train_classifier.py"
