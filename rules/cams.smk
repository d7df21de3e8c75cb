# CAM stage: multi-scale + flip CAMs into HDF5, then their quality against the masks.
# {cams} names a CAM store (see wsss_core/plan.py).


wildcard_constraints:
    cams=one_of(CAM_STORES),


rule infer_cams:
    """CAMs of every training image, restricted to its labelled classes, max-normalised."""
    input:
        model=CLS_DIR / "{cams}" / "model.pt",
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        code=code("cams/infer.py"),
    output:
        CAM_DIR / "{cams}" / f"{CAM_SPLIT}.h5",
    log:
        LOGS / "cams" / "infer_{cams}.log",
    benchmark:
        BENCH / "cams" / "infer_{cams}.tsv"
    wildcard_constraints:
        cams=one_of(PLAIN_CAMS),
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        split=CAM_SPLIT,
        cams=section(CAMS, keep=("scales", "flip", "batch_size", "num_workers")),
    script:
        "../workflow_scripts/infer_cams.py"


rule infer_coattentive_cams:
    """Single-round CAMs of the co-attention classifier and, from the same pass, multi-round co-attentive
    CAMs (self-pairs + reference images sharing each class, features cached once per image).
    """
    input:
        model=CLS_DIR / "{method}" / "model.pt",
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        code=code("cams/coattention.py"),
    output:
        single=CAM_DIR / "{method}" / f"{CAM_SPLIT}.h5",
        multi=CAM_DIR / "{method}_multiround" / f"{CAM_SPLIT}.h5",
    log:
        LOGS / "cams" / "infer_{method}.log",
    benchmark:
        BENCH / "cams" / "infer_{method}.tsv"
    wildcard_constraints:
        method=one_of(COATTENTIVE),
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=480,
    params:
        split=CAM_SPLIT,
        cams=section(CAMS, drop=("multiround", "label_source", "eval_thresholds")),
    script:
        "../workflow_scripts/infer_coattentive_cams.py"


rule merge_erasing_rounds:
    """Adversarial erasing: the rounds' CAMs merged (per class and pixel the maximum: the union of the
    regions each round mined, at every threshold)."""
    input:
        stores=lambda wildcards: round_stores(wildcards.variant, ROUNDS),
        root=dataset_root(),
        dataset=dataset_parts("train_labels"),
        code=code("cams/merge.py"),
    output:
        CAM_DIR / "{variant}" / f"{CAM_SPLIT}.h5",
    log:
        LOGS / "cams" / "merge_{variant}.log",
    benchmark:
        BENCH / "cams" / "merge_{variant}.tsv"
    wildcard_constraints:
        variant=one_of(ERASING),
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        split=CAM_SPLIT,
        how="max",
    script:
        "../workflow_scripts/merge_cam_stores.py"


rule combine_with_baseline:
    """cams.label_source with_baseline: the geometric mean of the co-attention CAMs and the plain baseline's (per
    class and pixel), the CAMs that make the pseudo labels: a class scores high only where both classifiers agree."""
    input:
        stores=lambda wildcards: [cam_store(s) for s in PLAN.combined[wildcards.combined]],
        root=dataset_root(),
        dataset=dataset_parts("train_labels"),
        code=code("cams/merge.py"),
    output:
        CAM_DIR / "{combined}" / f"{CAM_SPLIT}.h5",
    log:
        LOGS / "cams" / "combine_{combined}.log",
    benchmark:
        BENCH / "cams" / "combine_{combined}.tsv"
    wildcard_constraints:
        combined=one_of(PLAN.combined),
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        split=CAM_SPLIT,
        how="geometric_mean",
    script:
        "../workflow_scripts/merge_cam_stores.py"


rule evaluate_cams:
    """mIoU against the masks for every background threshold; the best one feeds later stages."""
    input:
        cams=CAM_DIR / "{cams}" / f"{CAM_SPLIT}.h5",
        root=dataset_root(),
        dataset=dataset_parts("train_masks"),
        code=code("cams/evaluate.py"),
    output:
        sweep=report(
            CAM_DIR / "{cams}" / "eval" / "threshold_sweep.csv",
            category="CAMs",
            subcategory="{cams}",
            caption="../report/threshold_sweep.rst",
        ),
        plot=report(
            CAM_DIR / "{cams}" / "eval" / "threshold_sweep.png",
            category="CAMs",
            subcategory="{cams}",
            caption="../report/threshold_sweep.rst",
        ),
        best=CAM_DIR / "{cams}" / "eval" / "best_threshold.json",
        per_class=report(
            CAM_DIR / "{cams}" / "eval" / "per_class_iou.csv",
            category="CAMs",
            subcategory="{cams}",
            caption="../report/per_class_iou.rst",
        ),
        summary_row=RESULTS / "summary_rows" / "cams_{cams}.csv",
    log:
        LOGS / "cams" / "evaluate_{cams}.log",
    benchmark:
        BENCH / "cams" / "evaluate_{cams}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        split=CAM_SPLIT,
        method=lambda wildcards: wildcards.cams,
        thresholds=CAMS["eval_thresholds"],
    script:
        "../workflow_scripts/evaluate_cams.py"
