"""Classifier variants: a base method plus training add-ons, named like ``cam+puzzle+erasing``.

The name is what the workflow calls the classifier (its result folders, its rows in summary.csv)
and what the config's ``classifier.method`` / ``classifier.compare`` hold. Add-ons compose with each
other and with either method; :func:`canonical` orders them as :data:`ADDONS` does, so
``cam+erasing+puzzle`` and ``cam+puzzle+erasing`` name the same classifier.
"""

from __future__ import annotations

from wsss_core.models.classifier import METHODS

# puzzle: Puzzle-CAM's tile/merge consistency (train/puzzle.py); binomial: importance-sampled logits and
# the feature-similarity loss (train/binomial.py); erasing: adversarial erasing rounds (train/erasing.py)
ADDONS = ("puzzle", "binomial", "erasing")


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
