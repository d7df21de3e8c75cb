"""What a configuration asks the workflow to build, and what each of its jobs is called.

The rules (``rules/*.smk``) ask a :class:`Plan` which classifiers to train, which CAM stores to
infer, which pseudo-label recipes to make and which segmentation networks to train; they name
their files and wildcards after its answers. Everything here is plain Python on the validated
config, so it is tested without Snakemake.

Names:

- a classifier **variant** is a method (``cam`` | ``coattention``) with add-ons (:data:`ADDONS`),
  e.g. ``cam+puzzle``; :func:`canonical` orders the add-ons, so ``cam+erasing+puzzle`` and
  ``cam+puzzle+erasing`` name the same classifier;
- a **CAM store** is named after the classifier whose CAMs it holds; a co-attention classifier's
  multi-round CAMs are ``<name>_multiround``; adversarial erasing adds one classifier and CAM store
  per round after the first (``<name>_round<r>``) and the rounds' merged CAMs under the variant's
  name; ``cams.label_source: with_baseline`` adds ``<co-attention store>_x_cam``, its geometric mean with the
  plain baseline's CAMs; the AffinityNet walk of the main CAMs is ``<main CAMs>_random_walk``;
- a **segmentation run** is ``<main CAMs>+<recipe>`` (the pseudo labels it learns from), or
  :data:`REFERENCE` for the network trained on the ground-truth masks.
"""

from __future__ import annotations

import re

from wsss_core.models.classifier import METHODS

# puzzle: Puzzle-CAM's tile/merge consistency (train/puzzle.py); binomial: importance-sampled logits and
# the feature-similarity loss (train/binomial.py); erasing: adversarial erasing rounds (train/erasing.py)
ADDONS = ("puzzle", "binomial", "erasing")
# The module of each add-on: the training code imports all of them, but a variant runs only its own.
ADDON_MODULES = {addon: f"train/{addon}.py" for addon in ADDONS}
# The segmentation network trained on the ground-truth masks.
REFERENCE = "fully_supervised"
# The plain-CAM classifier: the co-attention warm start, and the CAMs cams.label_source with_baseline combines.
BASELINE = "cam"
# The name of a combined store: <co-attention store>_x_cam.
COMBINED_SUFFIX = f"_x_{BASELINE}"


def parse_variant(name: str, key: str = "classifier.method") -> tuple[str, tuple[str, ...]]:
    """(method, add-ons in canonical order) of a variant name; errors name the config ``key``."""
    method, *addons = str(name).split("+")
    if method not in METHODS:
        raise ValueError(f"config key {key}: '{name}' must start with a method, one of {list(METHODS)}")
    unknown = [a for a in addons if a not in ADDONS]
    if unknown:
        raise ValueError(f"config key {key}: '{name}' has unknown add-on(s) {unknown} (known: {list(ADDONS)})")
    if len(set(addons)) != len(addons):
        raise ValueError(f"config key {key}: '{name}' names an add-on twice")
    return method, tuple(a for a in ADDONS if a in addons)


def variant_name(method: str, addons=()) -> str:
    """The canonical name of ``method`` with ``addons``."""
    return "+".join([method, *(a for a in ADDONS if a in addons)])


def canonical(name: str, key: str = "classifier.method") -> str:
    """``name`` with its add-ons in canonical order (ValueError naming ``key`` if it is not a variant)."""
    return variant_name(*parse_variant(name, key))


def without(name: str, addon: str) -> str:
    """The variant ``name`` less one add-on (e.g. the first erasing round's classifier)."""
    method, addons = parse_variant(name)
    return variant_name(method, [a for a in addons if a != addon])


def one_of(names) -> str:
    """A wildcard constraint (regular expression) matching exactly ``names``; nothing at all when there are none."""
    return "|".join(re.escape(str(n)) for n in names) or "(?!)"


def section(cfg: dict, *, keep=None, drop=()) -> dict:
    """The keys of the config section ``cfg`` a job is given: those in ``keep`` (all when None) less ``drop``.

    A job's settings are a Snakemake param: giving it only the keys it reads means an edit to any
    other key does not rerun it.
    """
    return {k: v for k, v in cfg.items() if (keep is None or k in keep) and k not in drop}


def _order(name: str):
    method, addons = parse_variant(name)
    return len(addons), METHODS.index(method), [ADDONS.index(a) for a in addons]


def _unique(names) -> list:
    return list(dict.fromkeys(names))


class Plan:
    """The classifiers, CAM stores, pseudo-label recipes and segmentation runs of a validated ``config``.

    Raises ValueError naming the config key of a classifier name that is not a variant.
    """

    def __init__(self, config: dict):
        self.classifier = cls = config["classifier"]
        self.rounds = cls["erasing"]["rounds"]
        self.multiround_cams = config["cams"]["multiround"]
        self.main_classifier = canonical(cls["method"], "classifier.method")
        compared = [canonical(v, f"classifier.compare[{i}]") for i, v in enumerate(cls["compare"])]
        # baseline first, as summary.csv lists them
        self.classifiers = sorted({self.main_classifier, *compared}, key=_order)
        label_source = config["cams"]["label_source"]
        with_baseline = parse_variant(self.main_classifier)[0] == "coattention" and label_source == "with_baseline"
        # every classifier rule train_classifier trains (erasing rounds after the first: train_erasing_round)
        self.trained = {self.round_classifiers(v)[0] if self.erasing(v) else v for v in self.classifiers}
        # a warm-started co-attention classifier needs the plain baseline trained too, and so do with_baseline's CAMs
        needed = {w for v in self.trained for w in self.warm_start(v)} | ({BASELINE} if with_baseline else set())
        self.trained = sorted(self.trained | needed, key=_order)
        self.erasing_variants = [v for v in self.classifiers if self.erasing(v)]
        # classifiers whose single-round CAMs infer_coattentive_cams writes (with the multi-round ones),
        # and those whose CAMs infer_cams writes
        self.coattentive = [t for t in self.trained if self.multiround(t)]
        self.plain_cams = [t for t in self.trained if not self.multiround(t)] + [
            r for v in self.erasing_variants for r in self.round_classifiers(v)[1:]
        ]
        self.cam_stores = _unique(s for v in self.classifiers for s in self.cams_of(v))
        # the CAMs that make the pseudo labels: the main classifier's last store (an erasing variant's merged
        # rounds), for co-attention the one cams.label_source names
        self.main_cams = self.cams_of(self.main_classifier)[-1]
        if self.multiround(self.main_classifier) and label_source != "multiround":
            self.main_cams = self.main_classifier
        # with_baseline: the geometric mean of those CAMs and the plain baseline's, a store of its own (the
        # baseline's CAMs are inferred and scored too)
        self.combined = {}
        if with_baseline:
            self.combined = {f"{self.main_cams}{COMBINED_SUFFIX}": [self.main_cams, BASELINE]}
            self.main_cams = f"{self.main_cams}{COMBINED_SUFFIX}"
            self.cam_stores = _unique([BASELINE, *self.cam_stores, self.main_cams])

        pseudo, seg = config["pseudo_labels"], config["segmentation"]
        self.recipe = pseudo["recipe"]
        self.saliency_recipe = pseudo["saliency_recipe"]
        # the recipe that feeds the main network first, then those with networks of their own
        self.seg_recipes = _unique([pseudo["recipe"], *seg["compare"]])
        self.recipes = _unique([pseudo["recipe"], *pseudo["compare"], *self.seg_recipes])
        self.rw_cams = f"{self.main_cams}_random_walk"
        if any(r.startswith("random_walk") for r in self.recipes):
            self.cam_stores.append(self.rw_cams)
        self.main_run = f"{self.main_cams}+{self.recipe}"
        self.seg_runs = [f"{self.main_cams}+{r}" for r in self.seg_recipes] + (
            [REFERENCE] if config["evaluation"]["fully_supervised"] else []
        )

    # ---------------------------------------------------------------- classifiers and their CAMs

    @staticmethod
    def erasing(name: str) -> bool:
        return "erasing" in parse_variant(name)[1]

    def round_classifiers(self, name: str) -> list[str]:
        """The classifiers of an adversarial-erasing variant's rounds: round 1 is the variant without erasing."""
        return [without(name, "erasing")] + [f"{name}_round{r}" for r in range(2, self.rounds + 1)]

    def multiround(self, name: str) -> bool:
        """Whether a classifier trained by train_classifier also gets multi-round co-attentive CAMs."""
        return self.multiround_cams and parse_variant(name)[0] == "coattention"

    def cams_of(self, name: str) -> list[str]:
        """The CAM stores computed from a classifier variant, the one it is judged by last."""
        if self.erasing(name):
            return [*self.round_classifiers(name), name]
        return [name] + ([f"{name}_multiround"] if self.multiround(name) else [])

    def extra_image_roots(self, name: str) -> list[str]:
        """The extra image sources a classifier variant trains on (co-attention methods only)."""
        if parse_variant(name)[0] != "coattention":
            return []
        return [s["root"] for s in self.classifier["coattention"]["extra_sources"]]

    def unused_addon_modules(self, name: str) -> list[str]:
        """The add-on modules variant ``name`` does not run: an edit to one of them does not retrain it."""
        _, addons = parse_variant(name)
        return [module for addon, module in ADDON_MODULES.items() if addon not in addons]

    def warm_start(self, name: str) -> list[str]:
        """The classifier whose weights variant ``name`` starts from: the plain baseline ``cam`` for co-attention
        variants with ``classifier.coattention.warm_start``, else none (ImageNet backbone, random heads)."""
        if (
            parse_variant(name.partition("_round")[0])[0] == "coattention"
            and self.classifier["coattention"]["warm_start"]
        ):
            return [BASELINE]
        return []

    def classifier_config(self, name: str) -> dict:
        """The classifier section as the variant ``name`` is trained with: the shared settings plus the
        sections of its method and add-ons only (so editing them retrains only the classifiers they apply to)."""
        method, addons = parse_variant(name)
        cfg = section(self.classifier, drop=("method", "compare", "coattention", *ADDONS))
        cfg["method"], cfg["addons"] = method, list(addons)
        if method == "coattention":
            cfg["coattention"] = self.classifier["coattention"]
        for addon in addons:
            cfg[addon] = self.classifier[addon]
        return cfg

    # ---------------------------------------------------------------- pseudo labels and networks

    def recipe_cams(self, recipe: str) -> str | None:
        """The CAM store a pseudo-label recipe takes its classes from (None for saliency_only)."""
        if recipe == "saliency_only":
            return None
        return self.rw_cams if recipe == "random_walk" else self.main_cams

    def recipe_walked(self, recipe: str) -> str | None:
        """The walked store random_walk_saliency multiplies into the CAMs' class scores (None for the others)."""
        return self.rw_cams if recipe == "random_walk_saliency" else None

    def saliency_recipe_settings(self, recipe: str) -> dict:
        """The keys of pseudo_labels.saliency_recipe a saliency recipe uses (saliency_only: the saliency cut only)."""
        if recipe == "saliency_only":
            return section(self.saliency_recipe, keep=("sal_threshold",))
        return section(self.saliency_recipe, drop=("crf",))

    def run_recipe(self, run: str) -> str | None:
        """The pseudo-label recipe a segmentation run learns from (None for the reference's GT masks)."""
        if run == REFERENCE:
            return None
        # the recipe follows the last "+": CAM-store names may hold "+" too (cam+puzzle)
        return run.rpartition("+")[2]
