# Classifier stage: learn a classifier from the image-level labels of the training split.
# {method}: cam (the plain-CAM baseline) or coattention (pairs of images, Sun et al. ECCV 2020), each with
# optional add-ons (cam+puzzle, coattention+binomial, ...; see common.smk).

CLS_DIR = RESULTS / "classifier"


rule train_classifier:
    """CAM: backbone + 1x1 class conv + GAP; co-attention: the same + co-attention heads on image pairs.
    Multilabel soft-margin losses, checkpointed every epoch."""
    input:
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        extra=lambda wildcards: PLAN.extra_image_roots(wildcards.method),
        # classifier.coattention.warm_start: the plain baseline's weights to start from
        init=lambda wildcards: [CLS_DIR / c / "model.pt" for c in PLAN.warm_start(wildcards.method)],
        code=lambda wildcards: classifier_code(wildcards.method),
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
    wildcard_constraints:
        method=one_of(TRAINED),
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        cfg=lambda wildcards: PLAN.classifier_config(wildcards.method),
        split=DATASET["train_split"],
        # not an output: survives a kill so that --rerun-incomplete resumes training
        checkpoint_dir=lambda wildcards: CLS_DIR / wildcards.method / "checkpoints",
    script:
        "../workflow_scripts/train_classifier.py"


# Adversarial erasing: round {round} >= 2 of a variant trains a fresh classifier on the training images with
# what the CAMs of rounds 1..round-1 found painted over. Every round is a job of its own (model, log, benchmark,
# checkpoints), so rounds cache and rerun independently; one rule for all rounds keeps the rule names (and a
# SLURM profile's set-resources) independent of classifier.erasing.rounds.
rule train_erasing_round:
    """Adversarial erasing, round >= 2: the classifier variant retrained on the images with the regions of the
    earlier rounds' CAMs (above classifier.erasing.threshold) painted over."""
    input:
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        extra=lambda wildcards: PLAN.extra_image_roots(wildcards.variant),
        # the earlier rounds' CAM stores: the regions to erase
        erase=lambda wildcards: round_stores(wildcards.variant, int(wildcards.round) - 1),
        init=lambda wildcards: [CLS_DIR / c / "model.pt" for c in PLAN.warm_start(wildcards.variant)],
        code=lambda wildcards: classifier_code(wildcards.variant),
    output:
        model=CLS_DIR / "{variant}_round{round}" / "model.pt",
        history=report(
            CLS_DIR / "{variant}_round{round}" / "train_history.csv",
            category="Classifier",
            subcategory="{variant} round {round}",
            caption="../report/train_history.rst",
        ),
    log:
        LOGS / "classifier" / "train_{variant}_round{round}.log",
    benchmark:
        BENCH / "classifier" / "train_{variant}_round{round}.tsv"
    wildcard_constraints:
        variant=one_of(ERASING),
        round=one_of([str(r) for r in range(2, ROUNDS + 1)]),
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        cfg=lambda wildcards: PLAN.classifier_config(wildcards.variant),
        split=DATASET["train_split"],
        checkpoint_dir=lambda wildcards: CLS_DIR / f"{wildcards.variant}_round{wildcards.round}" / "checkpoints",
    script:
        "../workflow_scripts/train_classifier.py"
