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


# The segmentation network trained on the GT masks (the upper bound) runs under this name.
REFERENCE = "fully_supervised"


def segmentation_labels(wildcards):
    """What a segmentation network learns from: the pseudo-label folder of the classifier method
    named by the wildcard, or nothing for the reference, whose GT masks are part of the dataset.
    """
    if wildcards.labels == REFERENCE:
        return []
    return rules.make_pseudo_labels.output[0]
