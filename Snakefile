# wsss: weakly supervised semantic segmentation, one Snakemake DAG from download to mIoU.
# Topics live in rules/*.smk; the code they call lives in wsss_core/.
import os

from snakemake.utils import min_version

min_version("9.0")


# Defaults sit beside this file, whatever the working directory; --configfile deep-merges over them.
configfile: os.path.join(workflow.basedir, "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/classifier.smk"
include: "rules/cams.smk"
include: "rules/saliency.smk"
include: "rules/affinity.smk"
include: "rules/pseudo_labels.smk"
include: "rules/segmentation.smk"
include: "rules/report.smk"
include: "rules/summary.smk"


rule all:
    default_target: True
    input:
        dataset_summary=RESULTS / "data" / "dataset_summary.json",
        summary=RESULTS / "summary.csv",
        overlays=rules.overlays.output[0],
