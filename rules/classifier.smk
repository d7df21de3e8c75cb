# Classifier stage: learn a classifier from the image-level labels of the training split.
# {method}: cam (the plain-CAM baseline) or coattention (pairs of images, Sun et al. ECCV 2020).

CLS_DIR = RESULTS / "classifier"


wildcard_constraints:
    method="|".join(re.escape(m) for m in CLASSIFIERS),


rule train_classifier:
    """CAM: backbone + 1x1 class conv + GAP; co-attention: the same + co-attention heads on image pairs.
    Multilabel soft-margin losses, checkpointed every epoch."""
    input:
        # a gate (the dataset passed validation), not data: re-validating must not retrain
        dataset_summary=ancient(RESULTS / "data" / "dataset_summary.json"),
        root=dataset_root(),
        extra=lambda wildcards: (
            [s["root"] for s in CLS["coattention"]["extra_sources"]]
            if wildcards.method == "coattention"
            else []
        ),
        code=code("train/classifier.py"),
    output:
        model=CLS_DIR / "{method}" / "model.pt",
        history=report(
            CLS_DIR / "{method}" / "train_history.csv",
            category="Classifier",
            subcategory="{method}",
            caption="../report/train_history.rst",
        ),
    log:
        LOGS / "classifier" / "train_{method}.log",
    benchmark:
        BENCH / "classifier" / "train_{method}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        cfg=lambda wildcards: classifier_config(wildcards.method),
        split=DATASET["train_split"],
        # not an output: survives a kill so that --rerun-incomplete resumes training
        checkpoint_dir=lambda wildcards: CLS_DIR / wildcards.method / "checkpoints",
    script:
        "../workflow_scripts/train_classifier.py"
