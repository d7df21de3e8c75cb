# Segmentation stage: DeepLab trained on the pseudo labels (and on the GT masks: the fully-supervised
# reference), its predictions on the evaluation split, and their mIoU.
# The {labels} wildcard names the pseudo labels learnt from, <cams>+<recipe> (wsss_core/plan.py), or
# "fully_supervised" for the reference trained on the GT masks.

SEG = config["segmentation"]
EVAL = config["evaluation"]
SEG_DIR = RESULTS / "segmentation"
EVAL_SPLIT = DATASET["eval_split"]


wildcard_constraints:
    labels=one_of(SEG_RUNS),


rule train_segmentation:
    """Cross-entropy (255 ignored), the optimizer and schedule of config segmentation, checkpointed every epoch."""
    input:
        root=dataset_root(),
        # the reference learns from the GT masks of the training split
        dataset=lambda wildcards: dataset_parts(
            "train_labels",
            "train_images",
            *(["train_masks"] if wildcards.labels == REFERENCE else []),
        ),
        labels=segmentation_labels,
        code=code("train/segmentation.py"),
    output:
        model=SEG_DIR / "{labels}" / "model.pt",
        history=report(
            SEG_DIR / "{labels}" / "train_history.csv",
            category="Segmentation",
            subcategory="{labels}",
            caption="../report/segmentation_history.rst",
        ),
    log:
        LOGS / "segmentation" / "train_{labels}.log",
    benchmark:
        BENCH / "segmentation" / "train_{labels}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        # segmentation.compare says which networks exist, not how one trains
        cfg=section(SEG, drop=("compare",)),
        split=DATASET["train_split"],
        # not an output: survives a kill so that --rerun-incomplete resumes training
        checkpoint_dir=lambda wildcards: SEG_DIR / wildcards.labels / "checkpoints",
    script:
        "../workflow_scripts/train_segmentation.py"


rule predict_segmentation:
    """Label maps of the evaluation split: multi-scale + flip softmax average, optional dense CRF."""
    input:
        model=rules.train_segmentation.output.model,
        root=dataset_root(),
        dataset=dataset_parts("eval_images"),
        code=code("segmentation/predict.py"),
    output:
        directory(SEG_DIR / "{labels}" / "predictions" / EVAL_SPLIT),
    log:
        LOGS / "segmentation" / "predict_{labels}.log",
    benchmark:
        BENCH / "segmentation" / "predict_{labels}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        split=EVAL_SPLIT,
        scales=EVAL["scales"],
        flip=EVAL["flip"],
        crf=config["crf"] if EVAL["crf"] else None,
    script:
        "../workflow_scripts/predict_segmentation.py"


rule evaluate_segmentation:
    """Confusion matrix -> per-class IoU and mIoU of the predictions."""
    input:
        labels=rules.predict_segmentation.output[0],
        root=dataset_root(),
        dataset=dataset_parts("eval_masks"),
        code=code("label_maps.py"),
    output:
        per_class=report(
            SEG_DIR / "{labels}" / "eval" / "per_class_iou.csv",
            category="Segmentation",
            subcategory="{labels}",
            caption="../report/segmentation_per_class.rst",
        ),
        summary_row=RESULTS / "summary_rows" / "segmentation_{labels}.csv",
    log:
        LOGS / "segmentation" / "evaluate_{labels}.log",
    benchmark:
        BENCH / "segmentation" / "evaluate_{labels}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        stage="segmentation",
        split=EVAL_SPLIT,
        method=lambda wildcards: wildcards.labels,
    script:
        "../workflow_scripts/evaluate_label_maps.py"
