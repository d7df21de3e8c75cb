"""Loss add-ons of the classifier objectives: terms on a batch of single images and their CAMs.

Each add-on is a callable ``(model, images, labels, cams, progress) -> {name: weighted term}``; the
objectives (``train/classifier.py``, ``train/coattention.py``) add every term to their own loss, so
add-ons compose with each other and with either method. ``progress`` (0..1, the fraction of the
training steps done) drives schedules such as Puzzle-CAM's alpha ramp. Adversarial erasing changes
the training images instead (``train/erasing.py``).
"""

from __future__ import annotations

from wsss_core.train.binomial import BinomialTerms
from wsss_core.train.puzzle import PuzzleTerms


def loss_addons(cfg: dict, stride: int, mean, std) -> list:
    """The add-ons of ``cfg["addons"]`` that add loss terms, each ``(model, images, labels, cams, progress)
    -> {name: weighted term}`` on a batch of single images and their CAMs (erasing changes the data instead)."""
    addons = cfg.get("addons", [])
    terms = []
    if "puzzle" in addons:
        terms.append(PuzzleTerms(cfg["puzzle"], stride, cfg["crop_size"]))
    if "binomial" in addons:
        terms.append(BinomialTerms(cfg["binomial"], mean, std))
    return terms


def add_terms(terms: dict, addons: list, model, images, labels, cams, progress: float) -> dict:
    """``terms`` with every add-on's terms added, each also into ``terms["total"]``."""
    for addon in addons:
        for name, value in addon(model, images, labels, cams, progress).items():
            terms[name] = value
            terms["total"] = terms["total"] + value
    return terms
