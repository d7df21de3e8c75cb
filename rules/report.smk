# The figure people look at first: one image per row, image | CAM | pseudo label | prediction | GT.


rule overlays:
    """Training images with their CAMs, pseudo labels, the WSSS network's prediction and the GT mask."""
    input:
        cams=rules.infer_cams.output[0],
        pseudo_labels=rules.make_pseudo_labels.output[0],
        model=expand(rules.train_segmentation.output.model, labels=CLS["method"]),
        root=dataset_root(),
        code=code("report/overlays.py"),
    output:
        report(
            RESULTS / "report" / f"overlays_{CLS['method']}.png",
            category="Overlays",
            caption="../report/overlays.rst",
        ),
    log:
        LOGS / "report" / f"overlays_{CLS['method']}.log",
    benchmark:
        BENCH / "report" / f"overlays_{CLS['method']}.tsv"
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
