# Data stage: build or fetch the dataset, then validate it up front, in parts (labels, images, masks of the
# train and eval splits). Each later step takes the validated parts it reads as inputs, so it never starts on a
# broken dataset and reruns when, and only when, one of those parts changes.

VOC12 = config["voc12"]
# Archive file name -> (config key of its URL, config key of its md5, extraction folder)
ARCHIVES = {
    "VOCtrainval_11-May-2012.tar": ("voc_url", "voc_md5", "voc"),
    "benchmark.tgz": ("sbd_url", "sbd_md5", "sbd"),
}
EXTRACTED = {folder: name for name, (_, _, folder) in ARCHIVES.items()}


if DATASET["source"] == "demo":

    rule demo_dataset:
        """Generate the synthetic demo dataset (classes share bodies, differ by a small part)."""
        input:
            code=code("data/demo.py"),
        output:
            directory(dataset_root()),
        log:
            LOGS / "data" / "demo_dataset.log",
        benchmark:
            BENCH / "data" / "demo_dataset.tsv"
        conda:
            "../envs/wsss.yaml"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=20,
        params:
            demo=config["demo"],
        script:
            "../workflow_scripts/make_demo.py"


rule download_archive:
    """Download one archive (resumes a partial .part file, verifies md5, retries)."""
    output:
        DATA / "downloads" / "{filename}",
    log:
        LOGS / "data" / "download_{filename}.log",
    benchmark:
        BENCH / "data" / "download_{filename}.tsv"
    wildcard_constraints:
        filename=one_of(ARCHIVES),
    # Cluster compute nodes are often offline: download on the submitting host.
    localrule: True
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=240,
    params:
        url=lambda wc: VOC12[ARCHIVES[wc.filename][0]],
        md5=lambda wc: VOC12[ARCHIVES[wc.filename][1]],
        retries=VOC12["retries"],
        timeout_s=VOC12["timeout_s"],
        deadline_s=VOC12["deadline_s"],
    script:
        "../workflow_scripts/download.py"


rule extract_archive:
    """Extract safely (no paths escaping the target) into a folder that appears only when complete."""
    input:
        archive=lambda wc: DATA / "downloads" / EXTRACTED[wc.part],
        code=code("data/download.py"),
    output:
        directory(DATA / "extracted" / "{part}"),
    log:
        LOGS / "data" / "extract_{part}.log",
    benchmark:
        BENCH / "data" / "extract_{part}.tsv"
    wildcard_constraints:
        part="voc|sbd",
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    script:
        "../workflow_scripts/extract.py"


if DATASET["source"] == "voc12":

    rule voc12_aug:
        """SegmentationClassAug (VOC PNGs + SBD .mat) and train_aug = SBD train+val + VOC train - VOC val."""
        input:
            voc=VOC12["voc_root"] or DATA / "extracted" / "voc",
            sbd=VOC12["sbd_root"] or DATA / "extracted" / "sbd",
            code=code("data/prepare_voc.py"),
        output:
            directory(dataset_root()),
        log:
            LOGS / "data" / "voc12_aug.log",
        benchmark:
            BENCH / "data" / "voc12_aug.tsv"
        conda:
            "../envs/wsss.yaml"
        threads: 4
        resources:
            mem_mb=4000,
            runtime=60,
        script:
            "../workflow_scripts/build_voc_aug.py"


rule validate_dataset:
    """Check one part of the dataset - the labels, images or masks of the train or eval split - listing every
    problem by file; the steps that read the part take its record as input."""
    input:
        root=dataset_root(),
        # a user's folder: the part's content fingerprint (common.smk), rewritten only when the part changed
        fingerprint=lambda wildcards: FINGERPRINTS.get(wildcards.part, []),
        code=code("data/validate.py"),
    output:
        VALIDATED / "{part}.json",
    log:
        LOGS / "data" / "validate_{part}.log",
    benchmark:
        BENCH / "data" / "validate_{part}.tsv"
    wildcard_constraints:
        part=one_of(PARTS),
    conda:
        "../envs/wsss.yaml"
    threads: DATASET["workers"]
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        split=lambda wildcards: part_split(wildcards.part),
        kind=lambda wildcards: wildcards.part.partition("_")[2],
        # training needs image labels only; evaluation needs masks
        require_masks=lambda wildcards: wildcards.part == "eval_masks"
        or DATASET["train_split"] == DATASET["eval_split"],
    script:
        "../workflow_scripts/validate_dataset.py"


rule summarize_dataset:
    """Images, masks and labels per split and images per class, for people; no step reads it."""
    input:
        root=dataset_root(),
        parts=dataset_parts(*PARTS),
        code=code("data/validate.py"),
    output:
        summary=RESULTS / "data" / "dataset_summary.json",
        class_counts=report(
            RESULTS / "data" / "class_counts.csv",
            category="Data",
            caption="../report/class_counts.rst",
        ),
    log:
        LOGS / "data" / "summarize_dataset.log",
    benchmark:
        BENCH / "data" / "summarize_dataset.tsv"
    conda:
        "../envs/wsss.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        train_split=DATASET["train_split"],
        eval_split=DATASET["eval_split"],
    script:
        "../workflow_scripts/summarize_dataset.py"
