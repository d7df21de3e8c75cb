# The figure people look at first: one image per row, image | CAM | pseudo label | prediction | GT.


rule overlays:
    """Training images with their CAMs, pseudo labels, the WSSS network's prediction and the GT mask."""
    input:
        cams=cam_store(MAIN_CAMS),
        pseudo_labels=PSEUDO_DIR / PSEUDO["recipe"] / CAM_SPLIT,
        model=expand(rules.train_segmentation.output.model, labels=MAIN_RUN),
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images", "train_masks"),
        code=code("report/overlays.py"),
    output:
        report(
            RESULTS / "report" / f"overlays_{MAIN_CAMS}.png",
            category="Overlays",
            caption="../report/overlays.rst",
        ),
    log:
        LOGS / "report" / f"overlays_{MAIN_CAMS}.log",
    benchmark:
        BENCH / "report" / f"overlays_{MAIN_CAMS}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        split=CAM_SPLIT,
        n_images=EVAL["overlay_images"],
    script:
        "../workflow_scripts/overlays.py"
