"""CAMs + saliency -> pseudo-label PNGs: the recipe of MCIS (Sun et al., ECCV 2020).

MCIS trains its segmentation network on labels that take the *objects' classes* from the
(co-attentive) CAMs and the *background* from a class-agnostic saliency map, since CAMs
cover only the discriminative parts of objects and are poor at saying where background is.
Per image, with the image's K classes:

1. Background score = 1 - saliency (in [0, 1]).
2. Class scores = each class's CAM divided by its own maximum (so every class peaks at 1 and
   weak classes are not drowned by strong ones), set to 0 where at most ``cam_threshold``:
   a weak CAM value is no evidence of the class.
3. Label = argmax over [background, classes] (background wins ties). A pixel that is not
   salient keeps a class only where the class score beats 1 - saliency.
4. Optionally, a dense CRF (:mod:`wsss_core.pseudo.crf`) over the image's own labels snaps
   this map to colour edges before the rules below void what cannot be trusted.
5. Conflict: two or more classes above ``cam_threshold`` -> 255. Overlapping CAMs of
   different classes (person on a horse) cannot say which object a pixel belongs to.
6. Salient but background -> 255 (saliency > ``sal_threshold``): an object the CAMs missed,
   or one of a class not in the label set; either way "background" would teach a wrong answer.
7. An image whose labelled foreground covers less than ``min_fg_share`` of its pixels -> all
   255: its CAMs found (almost) nothing of objects the image is known to contain, so its
   background is not trustworthy either.

With ``walked`` maps (the random walk of these CAMs: the random_walk_saliency recipe), the class scores
of rule 2 are the product of each class's max-normalised CAM and max-normalised walked map, max-normalised
again: a walked map alone is flatter than a CAM and reaches across touching objects of other classes
(overlaps that rule 5 voids), so the walk confirms or trims the CAM's extent instead of replacing it.

An image without labels is all background (0), as in the CAM-only recipe: it contains no
object of any class, so salient regions there are background by definition.

With ``extent="saliency"`` the saliency map alone says where objects are and the CAMs only say which
object a pixel belongs to: every salient pixel (saliency > ``sal_threshold``) takes the image's class
whose max-normalised CAM is highest there, void where the best two are within ``class_margin``; the
rest is background (rules 2-6 do not apply; the optional CRF snaps the map to colour edges before the
margin voids; rule 7 does). On photos where a saliency detector outlines the objects better than
CAMs do, this keeps the whole object labelled where the MCIS rules void every salient pixel no CAM
reaches; with one label per image it equals :func:`saliency_only_label` but for rule 7.

:func:`saliency_only_label` is the yardstick without any CAM: the salient pixels of an image with one
label take that label, those of an image with several labels are void (which object is which is
unknown), and the rest is background.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from functools import partial

import numpy as np

from wsss_core.data.voc_layout import IGNORE_INDEX
from wsss_core.pseudo.crf import crf_labels
from wsss_core.pseudo.labels import write_label_folder

DEFAULTS = {"cam_threshold": 0.3, "sal_threshold": 0.5, "min_fg_share": 0.01, "extent": "cams", "class_margin": 0.2}
EXTENTS = ("cams", "saliency")


def _check_settings(
    cam_threshold: float,
    sal_threshold: float,
    min_fg_share: float,
    extent: str = DEFAULTS["extent"],
    class_margin: float = DEFAULTS["class_margin"],
) -> None:
    if extent not in EXTENTS:
        raise ValueError(f"saliency pseudo labels: extent must be one of {', '.join(EXTENTS)}, got {extent!r}")
    for name, value in (
        ("cam_threshold", cam_threshold),
        ("sal_threshold", sal_threshold),
        ("min_fg_share", min_fg_share),
        ("class_margin", class_margin),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"saliency pseudo labels: {name} must be a number in [0, 1], got {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"saliency pseudo labels: {name} must be in [0, 1], got {value!r}")


def saliency_pseudo_label(
    image: np.ndarray,
    cams: np.ndarray,
    class_ids: Sequence[int],
    saliency: np.ndarray,
    *,
    cam_threshold: float = DEFAULTS["cam_threshold"],
    sal_threshold: float = DEFAULTS["sal_threshold"],
    min_fg_share: float = DEFAULTS["min_fg_share"],
    extent: str = DEFAULTS["extent"],
    class_margin: float = DEFAULTS["class_margin"],
    crf: dict | None = None,
    walked: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) uint8 pseudo label by the rules of the module docstring: class ids, 0, or 255 = void.

    ``cams`` (K, H, W) >= 0 for the K ``class_ids``; ``saliency`` (H, W) in [0, 1];
    ``image`` (H, W, 3) uint8, used by the CRF only; ``crf``: CRF params or None;
    ``extent``: "cams" (the MCIS rules) or "saliency" (salient pixels take their best class);
    ``walked``: (K, H, W) random-walk maps of the same classes, multiplied into the class scores, or None.
    """
    _check_settings(cam_threshold, sal_threshold, min_fg_share, extent, class_margin)
    cams, saliency = np.asarray(cams, np.float64), np.asarray(saliency, np.float64)  # cuts compare in float64
    class_ids = [int(c) for c in class_ids]
    size = np.shape(image)[:2]
    if cams.ndim != 3 or cams.shape[0] != len(class_ids) or cams.shape[1:] != size or saliency.shape != size:
        raise ValueError(
            f"saliency pseudo labels: CAMs {cams.shape} for {len(class_ids)} class id(s), saliency {saliency.shape}, "
            f"image {np.shape(image)}; expected (K, H, W) and (H, W) at image size"
        )
    if saliency.size and not (np.isfinite(saliency).all() and 0.0 <= saliency.min() and saliency.max() <= 1.0):
        raise ValueError("saliency pseudo labels: saliency values must be finite and in [0, 1]")
    if not class_ids:
        return np.zeros(size, np.uint8)
    scores = max_normalised(cams)
    if walked is not None:
        walked = np.asarray(walked, np.float64)
        if walked.shape != cams.shape:
            raise ValueError(f"saliency pseudo labels: walked maps {walked.shape} but CAMs {cams.shape}")
        scores = max_normalised(scores * max_normalised(walked))
    if extent == "saliency":
        return _salient_extent_label(
            image, scores, class_ids, saliency > sal_threshold, class_margin, min_fg_share, crf
        )
    on = scores > cam_threshold
    scores = np.where(on, scores, 0.0)
    labels = np.asarray([0, *class_ids], np.uint8)[np.concatenate([1.0 - saliency[None], scores]).argmax(0)]
    if crf is not None:
        labels = crf_labels(image, labels, [0, *class_ids], crf)
    labels[on.sum(0) >= 2] = IGNORE_INDEX
    labels[(saliency > sal_threshold) & (labels == 0)] = IGNORE_INDEX
    if np.isin(labels, class_ids).mean() < min_fg_share:
        labels[:] = IGNORE_INDEX
    return labels


def max_normalised(maps: np.ndarray) -> np.ndarray:
    """Each (H, W) map of a (K, H, W) stack divided by its own peak, in float64; 0 where the map is 0 everywhere.
    The saliency recipe's class scores (benchmarks score other maps the same way)."""
    maps = np.asarray(maps, np.float64)
    peaks = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
    return np.where(peaks > 0, maps / np.maximum(peaks, 1e-12), 0.0)


def _salient_extent_label(
    image: np.ndarray,
    scores: np.ndarray,
    class_ids: list[int],
    salient: np.ndarray,
    class_margin: float,
    min_fg_share: float,
    crf: dict | None,
) -> np.ndarray:
    """``extent="saliency"``: salient pixels -> their best class (void within ``class_margin``), else 0."""
    labels = np.zeros(salient.shape, np.uint8)
    labels[salient] = np.asarray(class_ids, np.uint8)[scores.argmax(0)][salient]
    if crf is not None:
        labels = crf_labels(image, labels, [0, *class_ids], crf)
    if len(class_ids) > 1:
        top_two = np.sort(scores, axis=0)[-2:]
        labels[(labels != 0) & (top_two[1] - top_two[0] < class_margin)] = IGNORE_INDEX
    if np.isin(labels, class_ids).mean() < min_fg_share:
        labels[:] = IGNORE_INDEX
    return labels


def saliency_only_label(
    image: np.ndarray,
    cams: np.ndarray,
    class_ids: Sequence[int],
    saliency: np.ndarray,
    *,
    sal_threshold: float = DEFAULTS["sal_threshold"],
) -> np.ndarray:
    """(H, W) uint8: saliency above ``sal_threshold`` -> the image's one class (255 with several), else 0.

    ``cams`` is not read (the recipe's signature is every recipe's); ``image`` gives the size only.
    """
    _check_settings(0.0, sal_threshold, 0.0)
    saliency = np.asarray(saliency, np.float64)
    if saliency.shape != np.shape(image)[:2]:
        raise ValueError(f"saliency-only labels: saliency {saliency.shape} but image {np.shape(image)}")
    class_ids = [int(c) for c in class_ids]
    labels = np.zeros(saliency.shape, np.uint8)
    if class_ids:
        labels[saliency > sal_threshold] = class_ids[0] if len(class_ids) == 1 else IGNORE_INDEX
    return labels


def make_saliency_only_labels(
    saliency_h5: str | os.PathLike,
    dataset_root: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    *,
    sal_threshold: float = DEFAULTS["sal_threshold"],
    workers: int = 1,
) -> dict:
    """Write ``<out_dir>/<id>.png`` by :func:`saliency_only_label` for every image of ``split`` (no CAMs)."""
    start = time.perf_counter()
    done = write_label_folder(
        None,
        dataset_root,
        split,
        out_dir,
        workers=workers,
        saliency_h5=saliency_h5,
        label_fn=partial(saliency_only_label, sal_threshold=sal_threshold),
    )
    return {**done, "sal_threshold": float(sal_threshold), "seconds": round(time.perf_counter() - start, 3)}


def make_saliency_pseudo_labels(
    cam_h5: str | os.PathLike,
    saliency_h5: str | os.PathLike,
    dataset_root: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    *,
    cam_threshold: float = DEFAULTS["cam_threshold"],
    sal_threshold: float = DEFAULTS["sal_threshold"],
    min_fg_share: float = DEFAULTS["min_fg_share"],
    extent: str = DEFAULTS["extent"],
    class_margin: float = DEFAULTS["class_margin"],
    crf: dict | None = None,
    walked_h5: str | os.PathLike | None = None,
    workers: int = 1,
) -> dict:
    """Write ``<out_dir>/<id>.png`` (VOC palette, 255 = void) for every image of ``split``.

    Reads the CAM store and the saliency store (:func:`wsss_core.pseudo.saliency.make_saliency`), and the
    random walk of those CAMs if ``walked_h5`` is given (random_walk_saliency); each must cover the split,
    at image resolution (errors name the file). Atomic and
    parallel like :func:`wsss_core.pseudo.labels.make_pseudo_labels`. Returns
    ``{"images", "all_void_images", <the settings>, "crf", "seconds"}``;
    ``all_void_images`` counts the images voided whole (rule 7), a sign of failing CAMs when high.
    """
    start = time.perf_counter()
    _check_settings(cam_threshold, sal_threshold, min_fg_share, extent, class_margin)
    settings = dict(
        cam_threshold=cam_threshold,
        sal_threshold=sal_threshold,
        min_fg_share=min_fg_share,
        extent=extent,
        class_margin=class_margin,
        crf=crf,
    )
    done = write_label_folder(
        cam_h5,
        dataset_root,
        split,
        out_dir,
        label_fn=partial(saliency_pseudo_label, **settings),
        workers=workers,
        saliency_h5=saliency_h5,
        walked_h5=walked_h5,
    )
    return {
        **done,
        "walked": walked_h5 is not None,
        "cam_threshold": float(cam_threshold),
        "sal_threshold": float(sal_threshold),
        "min_fg_share": float(min_fg_share),
        "extent": extent,
        "class_margin": float(class_margin),
        "crf": crf is not None,
        "seconds": round(time.perf_counter() - start, 3),
    }
