# Pseudo-label stage: CAMs -> label maps with 255 where unsure, by the recipes of config pseudo_labels.
# {recipe}: confident | saliency | random_walk | random_walk_saliency | saliency_only; random_walk is
# the confident rule applied to the CAMs walked by rule random_walk (affinity.smk); random_walk_saliency is
# the saliency recipe with the walked maps multiplied into the CAMs' class scores.

PSEUDO_DIR = RESULTS / "pseudo_labels" / MAIN_CAMS


wildcard_constraints:
    recipe=one_of(RECIPES),


rule make_pseudo_labels:
    """Confident foreground / background from the CAMs (confident) or from the walked CAMs (random_walk, IRN's
    labels), refined by dense CRF; palette PNGs."""
    input:
        cams=lambda w: recipe_cams(w.recipe),
        best=lambda w: expand(rules.evaluate_cams.output.best, cams=PLAN.recipe_cams(w.recipe))[0],
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        code=code("pseudo/labels.py"),
    output:
        directory(PSEUDO_DIR / "{recipe}" / CAM_SPLIT),
    log:
        LOGS / "pseudo_labels" / f"make_{MAIN_CAMS}_{{recipe}}.log",
    benchmark:
        BENCH / "pseudo_labels" / f"make_{MAIN_CAMS}_{{recipe}}.tsv"
    wildcard_constraints:
        recipe="confident|random_walk",
    conda:
        "../envs/wsss.yaml"
    # one process per thread: dense CRF is single-threaded
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        split=CAM_SPLIT,
        # random_walk: the walked maps' own threshold (affinity.threshold), as IRN's labels
        pseudo=lambda w: {
            **section(PSEUDO, keep=("fg_margin", "bg_margin")),
            "threshold": AFF["threshold"] if w.recipe == "random_walk" else PSEUDO["threshold"],
        },
        crf=config["crf"] if PSEUDO["crf"] else None,
    script:
        "../workflow_scripts/make_pseudo_labels.py"


rule make_saliency_pseudo_labels:
    """The MCIS recipe: classes from the CAMs (times their random walk: random_walk_saliency), background from the
    saliency maps; or
    saliency_only, the yardstick without CAMs: salient pixels take the image's label if it has one.
    """
    input:
        cams=lambda w: recipe_cams(w.recipe),
        # random_walk_saliency: the walk of these CAMs, multiplied into their class scores
        walked=lambda w: cam_store(PLAN.recipe_walked(w.recipe)) if PLAN.recipe_walked(w.recipe) else [],
        saliency=SALIENCY_H5,
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        code=code("pseudo/saliency_labels.py"),
    output:
        directory(PSEUDO_DIR / "{recipe}" / CAM_SPLIT),
    log:
        LOGS / "pseudo_labels" / f"make_{MAIN_CAMS}_{{recipe}}.log",
    benchmark:
        BENCH / "pseudo_labels" / f"make_{MAIN_CAMS}_{{recipe}}.tsv"
    wildcard_constraints:
        recipe="saliency|random_walk_saliency|saliency_only",
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        split=CAM_SPLIT,
        recipe=lambda w: PLAN.saliency_recipe_settings(w.recipe),
        crf=lambda w: (config["crf"] if PSEUDO["saliency_recipe"]["crf"] and w.recipe != "saliency_only" else None),
    script:
        "../workflow_scripts/make_saliency_pseudo_labels.py"


rule evaluate_pseudo_labels:
    """mIoU of the confident pixels and coverage (share of pixels not 255) against the masks."""
    input:
        labels=PSEUDO_DIR / "{recipe}" / CAM_SPLIT,
        root=dataset_root(),
        dataset=dataset_parts("train_masks"),
        code=code("label_maps.py"),
    output:
        per_class=report(
            PSEUDO_DIR / "{recipe}" / "eval" / "per_class_iou.csv",
            category="Pseudo labels",
            subcategory="{recipe}",
            caption="../report/pseudo_labels.rst",
        ),
        summary_row=RESULTS / "summary_rows" / f"pseudo_labels_{MAIN_CAMS}_{{recipe}}.csv",
    log:
        LOGS / "pseudo_labels" / f"evaluate_{MAIN_CAMS}_{{recipe}}.log",
    benchmark:
        BENCH / "pseudo_labels" / f"evaluate_{MAIN_CAMS}_{{recipe}}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        stage="pseudo_labels",
        split=CAM_SPLIT,
        method=lambda w: f"{MAIN_CAMS}+{w.recipe}",
    script:
        "../workflow_scripts/evaluate_label_maps.py"
