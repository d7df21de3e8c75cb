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
from wsss_core.config_checks import path_problems, relation_problems
from wsss_core.data.fingerprint import PARTS, update_fingerprints
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
# what the schema cannot say: output paths stay inside data_dir / results_dir, related keys agree
_problems = path_problems(config, os.getcwd()) + relation_problems(config)
if _problems:
    raise WorkflowError(
        "invalid configuration:\n" + "\n".join(f"  {p}" for p in _problems)
    )

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


# Classifiers and their CAMs. The {method} wildcard names a classifier variant: a method (cam |
# coattention) with add-ons (wsss_core/train/variants.py), e.g. cam+puzzle; the {cams} wildcard a CAM
# store: a classifier's single-round CAMs are named after it, the multi-round co-attentive CAMs of a
# co-attention classifier "<name>_multiround", and adversarial erasing adds one classifier and CAM store
# per round after the first ("<name>_round<r>") and the rounds' merged CAMs under the variant's name.
from wsss_core.train.variants import ADDONS, METHODS, canonical, parse_variant, without

CLS = config["classifier"]
CAMS = config["cams"]


def one_of(names):
    """A wildcard constraint matching exactly ``names`` (nothing at all when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def _variant(name, key):
    try:
        return canonical(name, key)
    except ValueError as err:
        raise WorkflowError(str(err))


MAIN_CLASSIFIER = _variant(CLS["method"], "classifier.method")
_compared = [
    _variant(v, f"classifier.compare[{i}]") for i, v in enumerate(CLS["compare"])
]


def _order(name):
    method, addons = parse_variant(name)
    return len(addons), METHODS.index(method), [ADDONS.index(a) for a in addons]


# baseline first, as summary.csv lists them
CLASSIFIERS = sorted({MAIN_CLASSIFIER, *_compared}, key=_order)
ROUNDS = CLS["erasing"]["rounds"]


def erasing(name):
    return "erasing" in parse_variant(name)[1]


def round_classifiers(name):
    """The classifiers of an adversarial-erasing variant's rounds: round 1 is the variant without erasing."""
    return [without(name, "erasing")] + [
        f"{name}_round{r}" for r in range(2, ROUNDS + 1)
    ]


def multiround(name):
    """Whether a classifier trained by train_classifier also gets multi-round co-attentive CAMs."""
    return CAMS["multiround"] and parse_variant(name)[0] == "coattention"


def cam_stores(name):
    """The CAM stores computed from a classifier variant, the one it is judged by last."""
    if erasing(name):
        return [*round_classifiers(name), name]
    return [name] + ([f"{name}_multiround"] if multiround(name) else [])


# every classifier trained by train_classifier (erasing rounds after the first: rule train_erasing_round)
TRAINED = sorted(
    {t for v in CLASSIFIERS for t in (round_classifiers(v)[:1] if erasing(v) else [v])},
    key=_order,
)
ERASING = [v for v in CLASSIFIERS if erasing(v)]
# classifiers whose single-round CAMs infer_coattentive_cams writes (with the multi-round ones), and
# those whose CAMs infer_cams writes
COATTENTIVE = [t for t in TRAINED if multiround(t)]
PLAIN_CAMS = [t for t in TRAINED if not multiround(t)] + [
    r for v in ERASING for r in round_classifiers(v)[1:]
]
CAM_STORES = list(dict.fromkeys(s for v in CLASSIFIERS for s in cam_stores(v)))
# the CAMs that make the pseudo labels: the best the main classifier offers
MAIN_CAMS = cam_stores(MAIN_CLASSIFIER)[-1]


def extra_image_roots(name):
    """The extra image sources a classifier variant trains on (co-attention methods only), as inputs."""
    if parse_variant(name)[0] != "coattention":
        return []
    return [s["root"] for s in CLS["coattention"]["extra_sources"]]


def round_stores(variant, rounds):
    """The CAM stores of an erasing variant's first ``rounds`` rounds (the first is its variant without erasing)."""
    return [
        CAM_DIR / c / f"{CAM_SPLIT}.h5" for c in round_classifiers(variant)[:rounds]
    ]


# The module of each classifier add-on: the training code imports all of them, but a variant runs only its own,
# so an edit to one retrains the variants that use it and not, say, the baseline.
ADDON_MODULES = {addon: f"train/{addon}.py" for addon in ADDONS}


def classifier_code(name):
    """The wsss_core files that train classifier variant ``name``."""
    _, addons = parse_variant(name)
    unused = [module for addon, module in ADDON_MODULES.items() if addon not in addons]
    return code("train/classifier.py", skip=unused)


def classifier_config(name):
    """The classifier section as the variant ``name`` is trained with: the shared settings plus the
    sections of its method and add-ons only (so editing them retrains only the classifiers they apply to).
    """
    method, addons = parse_variant(name)
    own = ("method", "compare", "coattention", *ADDONS)
    cfg = {k: v for k, v in CLS.items() if k not in own}
    cfg["method"], cfg["addons"] = method, list(addons)
    if method == "coattention":
        cfg["coattention"] = CLS["coattention"]
    for addon in addons:
        cfg[addon] = CLS[addon]
    return cfg


# Pseudo-label recipes (config pseudo_labels): the one that feeds segmentation first, then those compared.
# The random-walk recipes refine MAIN_CAMS with AffinityNet (affinity.smk) into a CAM store of its own.
PSEUDO = config["pseudo_labels"]
# Segmentation networks (config segmentation): one on the main recipe's pseudo labels and one per recipe of
# segmentation.compare, each named <cams>+<recipe> like its pseudo-label row; the reference learns the GT masks.
SEG_RECIPES = list(
    dict.fromkeys([PSEUDO["recipe"], *config["segmentation"]["compare"]])
)
RECIPES = list(dict.fromkeys([PSEUDO["recipe"], *PSEUDO["compare"], *SEG_RECIPES]))
RW_CAMS = f"{MAIN_CAMS}_random_walk"
if any(r.startswith("random_walk") for r in RECIPES):
    CAM_STORES.append(RW_CAMS)


def recipe_cams(recipe):
    """The CAM store a saliency recipe takes its classes from, as an input (none for saliency_only)."""
    if recipe == "saliency_only":
        return []
    return (
        CAM_DIR
        / (RW_CAMS if recipe == "random_walk_saliency" else MAIN_CAMS)
        / f"{CAM_SPLIT}.h5"
    )


def saliency_recipe_settings(recipe):
    """The keys of pseudo_labels.saliency_recipe a saliency recipe uses (saliency_only: the saliency cut only)."""
    settings = PSEUDO["saliency_recipe"]
    if recipe == "saliency_only":
        return {"sal_threshold": settings["sal_threshold"]}
    return {k: v for k, v in settings.items() if k != "crf"}


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
MAIN_RUN = f"{MAIN_CAMS}+{PSEUDO['recipe']}"
SEG_RUNS = [f"{MAIN_CAMS}+{r}" for r in SEG_RECIPES] + (
    [REFERENCE] if config["evaluation"]["fully_supervised"] else []
)


def segmentation_labels(wildcards):
    """What a segmentation network learns from: the pseudo labels of the recipe its name ends with
    (<cams>+<recipe>), or nothing for the reference, whose GT masks are part of the dataset.
    """
    if wildcards.labels == REFERENCE:
        return []
    # the recipe follows the last "+": CAM-store names may hold "+" too (cam+puzzle)
    recipe = wildcards.labels.rpartition("+")[2]
    return RESULTS / "pseudo_labels" / MAIN_CAMS / recipe / DATASET["train_split"]
