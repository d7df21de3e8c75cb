# Shared by every .smk file - validated config, result paths, and code-as-input.
import os
import re
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.utils import validate

REPO = Path(workflow.basedir)
sys.path.insert(
    0, str(REPO)
)  # wsss_core.workflow, also when Snakemake runs outside the venv
from wsss_core.workflow import module_sources


def check_config(cfg, schema_path):
    """Reject bad config values at parse time with one line per problem, each naming its key."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  config key {key}: {err.message}")
        raise WorkflowError(
            "invalid configuration (see config/schema.yaml):\n" + "\n".join(lines)
        )


check_config(config, REPO / "config" / "schema.yaml")
validate(config, "../config/schema.yaml")  # fills the schema's defaults

DATASET = config["dataset"]
DATA = Path(config["data_dir"])
RESULTS = Path(config["results_dir"]) / DATASET["name"]
LOGS = RESULTS / "logs"
BENCH = RESULTS / "benchmarks"


def code(*modules):
    """The wsss_core files behind a step, as inputs - the given entry modules and all they import.

    Snakemake notices edits to a rule's own script but not to imported modules;
    listing them as inputs makes an edit rerun that stage and its downstream only.
    """
    try:
        sources = module_sources(REPO / "wsss_core", list(modules))
    except FileNotFoundError as err:
        raise WorkflowError(f"code(): {err}")
    return [os.path.relpath(p) for p in sources]


def dataset_root():
    """Root folder of the configured dataset (VOC layout); produced by a rule unless source=folder."""
    source = DATASET["source"]
    if source == "folder":
        root = Path(DATASET["root"])
        if not root.is_dir():
            raise WorkflowError(f"config key dataset.root: {root} is not a folder")
        return root
    # demo and voc12 datasets are built by rules in data.smk under data_dir/<name>
    return DATA / DATASET["name"]


# Classifiers and their CAMs. The {method} wildcard names a classifier (cam | coattention); the {cams}
# wildcard a CAM store: a classifier's single-round CAMs are named after it, the multi-round
# co-attentive CAMs of the co-attention classifier "coattention_multiround".
CLS = config["classifier"]
CAMS = config["cams"]
# baseline first, as summary.csv lists them
CLASSIFIERS = [
    m for m in ("cam", "coattention") if m == CLS["method"] or m in CLS["compare"]
]
MULTIROUND = "coattention_multiround"


def cam_stores(method):
    """The CAM stores computed from a classifier."""
    multi = method == "coattention" and CAMS["multiround"]
    return [method] + ([MULTIROUND] if multi else [])


CAM_STORES = [store for method in CLASSIFIERS for store in cam_stores(method)]
# the CAMs that make the pseudo labels: the best the main classifier offers
MAIN_CAMS = cam_stores(CLS["method"])[-1]


def classifier_config(method):
    """The classifier section as a classifier of ``method`` is trained with: the shared settings,
    plus the co-attention ones only where they apply (so editing them retrains only that classifier).
    """
    cfg = {
        k: v for k, v in CLS.items() if k not in ("method", "compare", "coattention")
    }
    cfg["method"] = method
    if method == "coattention":
        cfg["coattention"] = CLS["coattention"]
    return cfg


# Pseudo-label recipes (config pseudo_labels): the one that feeds segmentation first, then those compared.
# The random-walk recipes refine MAIN_CAMS with AffinityNet (affinity.smk) into a CAM store of its own.
PSEUDO = config["pseudo_labels"]
RECIPES = [
    PSEUDO["recipe"],
    *[r for r in PSEUDO["compare"] if r != PSEUDO["recipe"]],
]
RW_CAMS = f"{MAIN_CAMS}_random_walk"
if any(r.startswith("random_walk") for r in RECIPES):
    CAM_STORES.append(RW_CAMS)


def recipe_cams(recipe):
    """The CAM store a saliency recipe takes its classes from."""
    return RW_CAMS if recipe == "random_walk_saliency" else MAIN_CAMS


# Saliency maps: the bundled model or the user's folder (config saliency).
SALIENCY = config["saliency"]


def saliency_folder():
    """A user's folder of saliency PNGs as an input (edits rerun the rule), or none for the built-in model."""
    if SALIENCY["source"] == "u2netp" or not any("saliency" in r for r in RECIPES):
        return []
    folder = Path(SALIENCY["source"])
    if not folder.is_dir():
        raise WorkflowError(
            f"config key saliency.source: {folder} is neither 'u2netp' nor a folder of saliency PNGs"
        )
    return folder


# The segmentation network trained on the GT masks (the upper bound) runs under this name.
REFERENCE = "fully_supervised"


def segmentation_labels(wildcards):
    """What a segmentation network learns from: the pseudo labels of the main recipe (the wildcard names
    the CAMs they come from), or nothing for the reference, whose GT masks are part of the dataset.
    """
    if wildcards.labels == REFERENCE:
        return []
    return (
        RESULTS
        / "pseudo_labels"
        / MAIN_CAMS
        / PSEUDO["recipe"]
        / DATASET["train_split"]
    )
