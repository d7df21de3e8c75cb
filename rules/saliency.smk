# Saliency stage: one class-agnostic saliency map per training image, the background cue of the
# saliency pseudo-label recipes (pseudo_labels.recipe saliency | random_walk_saliency).

SALIENCY_H5 = RESULTS / "saliency" / f"{CAM_SPLIT}.h5"


rule make_saliency:
    """U2-Netp saliency (onnxruntime) or the user's PNGs, checked and stored as HDF5 at image resolution."""
    input:
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        user_maps=saliency_folder(),
        code=code("pseudo/saliency.py"),
    output:
        SALIENCY_H5,
    log:
        LOGS / "saliency" / "make_saliency.log",
    benchmark:
        BENCH / "saliency" / "make_saliency.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    # no gpu: the pinned onnxruntime is the CPU build (onnxruntime-gpu would make this a GPU rule)
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        split=CAM_SPLIT,
        saliency=SALIENCY,
    script:
        "../workflow_scripts/make_saliency.py"
