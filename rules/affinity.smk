# AffinityNet stage (PSA): confident labels from the main CAMs -> affinity network -> random walk.
# Its output: a refined CAM store (RW_CAMS) that evaluate_cams scores and the random_walk and
# random_walk_saliency recipes (pseudo_labels.smk) read.

AFF = config["affinity"]
AFF_DIR = RESULTS / "affinity" / MAIN_CAMS
LABEL_KEYS = ("low_alpha", "high_alpha")
WALK_KEYS = ("beta", "logt")


rule affinity_labels:
    """Confident foreground (strong background, low alpha) and background (weak background, high alpha)
    from the CAMs, each CRF-refined, kept where the saliency map agrees (affinity.saliency_gate); the rest 255."""
    input:
        unpack(lambda w: {} if AFF["saliency_gate"] is None else {"saliency": SALIENCY_H5}),
        cams=cam_store(MAIN_CAMS),
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        code=code("refine/affinity_labels.py"),
    output:
        directory(AFF_DIR / "confident_labels" / CAM_SPLIT),
    log:
        LOGS / "affinity" / f"labels_{MAIN_CAMS}.log",
    benchmark:
        BENCH / "affinity" / f"labels_{MAIN_CAMS}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        split=CAM_SPLIT,
        alphas=section(AFF, keep=LABEL_KEYS),
        crf=config["crf"] if AFF["crf"] else None,
        saliency_gate=AFF["saliency_gate"],
    script:
        "../workflow_scripts/affinity_labels.py"


rule train_affinity:
    """Pixel-pair affinities within a radius, learnt from the confident labels (bg-pos, fg-pos, neg)."""
    input:
        labels=rules.affinity_labels.output[0],
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        code=code("train/affinity.py"),
    output:
        model=AFF_DIR / "model.pt",
        history=report(
            AFF_DIR / "train_history.csv",
            category="AffinityNet",
            caption="../report/train_history.rst",
        ),
    log:
        LOGS / "affinity" / f"train_{MAIN_CAMS}.log",
    benchmark:
        BENCH / "affinity" / f"train_{MAIN_CAMS}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        split=CAM_SPLIT,
        cfg=section(AFF, drop=(*LABEL_KEYS, "crf", "saliency_gate", "threshold", *WALK_KEYS)),
        # not an output: survives a kill so that --rerun-incomplete resumes training
        checkpoint_dir=AFF_DIR / "checkpoints",
    script:
        "../workflow_scripts/train_affinity.py"


rule random_walk:
    """CAMs walked over the affinity graph: a store of refined CAMs."""
    input:
        cams=cam_store(MAIN_CAMS),
        model=rules.train_affinity.output.model,
        root=dataset_root(),
        dataset=dataset_parts("train_labels", "train_images"),
        code=code("refine/propagate.py"),
    output:
        cams=cam_store(RW_CAMS),
    log:
        LOGS / "affinity" / f"random_walk_{MAIN_CAMS}.log",
    benchmark:
        BENCH / "affinity" / f"random_walk_{MAIN_CAMS}.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=240,
    params:
        split=CAM_SPLIT,
        walk=section(AFF, keep=WALK_KEYS),
    script:
        "../workflow_scripts/random_walk.py"
