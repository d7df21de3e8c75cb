# Shared by every .smk file: the validated config, result paths, the plan, and code-as-input.
# The plan (wsss_core/plan.py) says what the config asks for and what everything is called; what is
# left here needs Snakemake (paths as inputs, WorkflowError, ancient()).
import os
from pathlib import Path

from wsss_core.config_checks import apply_schema, path_problems, relation_problems
from wsss_core.data.fingerprint import PARTS, update_fingerprints
from wsss_core.plan import REFERENCE, Plan, one_of, section
from wsss_core.workflow import module_sources

REPO = Path(workflow.basedir)
_problems = apply_schema(config, REPO / "config" / "schema.yaml")  # also fills the schema's defaults
if _problems:
    raise WorkflowError("invalid configuration (see config/schema.yaml):\n" + "\n".join(f"  {p}" for p in _problems))
# what the schema cannot say: output paths stay inside data_dir / results_dir, related keys agree
_problems = path_problems(config, os.getcwd()) + relation_problems(config)
if _problems:
    raise WorkflowError("invalid configuration:\n" + "\n".join(f"  {p}" for p in _problems))
try:
    PLAN = Plan(config)
except ValueError as err:
    raise WorkflowError(str(err))

DATASET = config["dataset"]
DATA = Path(config["data_dir"])
RESULTS = Path(config["results_dir"]) / DATASET["name"]
LOGS = RESULTS / "logs"
BENCH = RESULTS / "benchmarks"
CAM_DIR = RESULTS / "cams"  # a CAM store: CAM_DIR / <store> / <CAM_SPLIT>.h5
CAM_SPLIT = DATASET["train_split"]


def code(*modules, skip=()):
    """The wsss_core files behind a step, as inputs - the given entry modules and all they import
    (except the modules in ``skip`` and what only they import).

    Snakemake notices edits to a rule's own script but not to imported modules;
    listing them as inputs makes an edit rerun that stage and its downstream only.
    """
    try:
        sources = module_sources(REPO / "wsss_core", list(modules), list(skip))
    except FileNotFoundError as err:
        raise WorkflowError(f"code(): {err}")
    return [os.path.relpath(p) for p in sources]


def dataset_root():
    """Root folder of the configured dataset (VOC layout): a user's folder (source=folder; its contents are
    tracked by dataset_parts(), so its own mtime is ignored) or the folder a rule in data.smk builds.
    """
    if DATASET["source"] == "folder":
        root = Path(DATASET["root"])
        if not root.is_dir():
            raise WorkflowError(f"config key dataset.root: {root} is not a folder")
        return ancient(root)
    return DATA / DATASET["name"]


# The dataset in parts (wsss_core/data/fingerprint.py): the labels, images and masks of the train and eval
# splits. Rule validate_dataset checks each part into VALIDATED / <part>.json; a step takes the parts it reads.
# A user's folder is fingerprinted by content each time the workflow is parsed: one file per part, rewritten
# only when that part changed, as the input of the part's validation.
VALIDATED = RESULTS / "data" / "validated"
FINGERPRINTS = (
    update_fingerprints(
        str(dataset_root()),
        DATASET["train_split"],
        DATASET["eval_split"],
        RESULTS / "data" / "fingerprint",
    )
    if DATASET["source"] == "folder"
    else {}
)


def part_split(part):
    """The split a dataset part belongs to (train_labels -> dataset.train_split)."""
    return DATASET[f"{part.partition('_')[0]}_split"]


def dataset_parts(*parts):
    """The validated dataset parts a step reads, as inputs: it starts only on checked data, and an edit
    inside the dataset reruns exactly the steps that read what changed."""
    return [VALIDATED / f"{p}.json" for p in parts]


# Classifiers ({method}, {variant} wildcards), CAM stores ({cams}), pseudo-label recipes and segmentation
# runs ({labels}): names and lists from the plan.
CLS = config["classifier"]
CAMS = config["cams"]
MAIN_CLASSIFIER = PLAN.main_classifier
CLASSIFIERS = PLAN.classifiers
ROUNDS = PLAN.rounds
TRAINED = PLAN.trained
ERASING = PLAN.erasing_variants
COATTENTIVE = PLAN.coattentive
PLAIN_CAMS = PLAN.plain_cams
CAM_STORES = PLAN.cam_stores
MAIN_CAMS = PLAN.main_cams
RW_CAMS = PLAN.rw_cams
RECIPES = PLAN.recipes
MAIN_RUN = PLAN.main_run
SEG_RUNS = PLAN.seg_runs
PSEUDO = config["pseudo_labels"]
SALIENCY = config["saliency"]


def cam_store(name):
    """A CAM store's file, as an input."""
    return CAM_DIR / name / f"{CAM_SPLIT}.h5"


def round_stores(variant, rounds):
    """The CAM stores of an erasing variant's first ``rounds`` rounds (the first is its variant without erasing)."""
    return [cam_store(c) for c in PLAN.round_classifiers(variant)[:rounds]]


def classifier_code(name):
    """The wsss_core files that train classifier variant ``name``: an edit to an add-on it does not use
    does not retrain it."""
    return code("train/classifier.py", skip=PLAN.unused_addon_modules(name))


def recipe_cams(recipe):
    """The CAM store a pseudo-label recipe takes its classes from, as an input (none for saliency_only)."""
    store = PLAN.recipe_cams(recipe)
    return cam_store(store) if store else []


def saliency_folder():
    """A user's folder of saliency PNGs as an input (edits rerun the rule), or none for the built-in model."""
    if SALIENCY["source"] == "u2netp" or not any("saliency" in r for r in RECIPES):
        return []
    folder = Path(SALIENCY["source"])
    if not folder.is_dir():
        raise WorkflowError(f"config key saliency.source: {folder} is neither 'u2netp' nor a folder of saliency PNGs")
    return folder


def segmentation_labels(wildcards):
    """What a segmentation network learns from: the pseudo labels of its recipe, or nothing for the
    reference, whose GT masks are part of the dataset."""
    recipe = PLAN.run_recipe(wildcards.labels)
    if recipe is None:
        return []
    return RESULTS / "pseudo_labels" / MAIN_CAMS / recipe / DATASET["train_split"]
