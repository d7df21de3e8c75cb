"""CAMs -> confident labels for AffinityNet training: PSA's two background strengths.

PSA scores background as ``bg = (1 - max_k CAM_k)^alpha`` and labels each pixel with the
argmax of ``[bg, CAMs]``, optionally refined by a dense CRF over the image's own labels.
Since ``1 - max`` lies in [0, 1], a larger ``alpha`` makes the background score *smaller*:

* ``low_alpha`` (4): background is strong, a class wins only where its CAM is clearly on
  (without CRF: max CAM > ~0.28). Its foreground is the **confident foreground**.
* ``high_alpha`` (32): background is weak, it wins only where every CAM is nearly off
  (without CRF: max CAM <= ~0.077). Its background is the **confident background**.

Everything else is void (255), and AffinityNet learns nothing from pairs that touch it.
Without CRF the two zones cannot overlap; after CRF they can, and there, as in PSA's
``ExtractAffinityLabelInRadius``, the confident background wins.

With a ``saliency_gate`` (a threshold on a class-agnostic saliency map in [0, 1]), a pixel keeps
its label only where the saliency map agrees: confident foreground only where saliency is above
the gate, confident background only where it is not; the rest becomes void. PSA's zones assume
CAMs whose confident foreground lies on the objects; CAMs that spread far into the background
(voc_coseg's: 2 of 3 confident-foreground pixels are background in the masks) would teach the
network that object and background belong together, and the gate removes those pixels.

Writes one palette PNG per image of a split into a folder that appears only when every
image is done (the CRF is slow, so this runs once, over forked workers, before training).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import partial

import numpy as np

from wsss_core.data.voc_layout import IGNORE_INDEX
from wsss_core.pseudo.crf import crf_probs
from wsss_core.pseudo.labels import image_cams, write_label_folder


def background_score(cams: np.ndarray, alpha: float) -> np.ndarray:
    """(H, W) ``(1 - max_k cams_k)^alpha``; 1 everywhere for an image without classes (K = 0)."""
    top = cams.max(0) if len(cams) else np.zeros(cams.shape[1:], cams.dtype)
    return (1.0 - top) ** alpha


def alpha_labels(
    image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int], *, alpha: float, crf: dict | None
) -> np.ndarray:
    """(H, W) uint8 argmax of ``[background_score(alpha), cams]`` as 0 / class ids, CRF-refined unless ``crf`` is None.

    The CRF gets the raw scores as probabilities (PSA's ``crf_inference``): its unary is -log of them.
    """
    cams = np.asarray(cams, np.float32)
    scores = np.concatenate([background_score(cams, alpha)[None], cams])
    if crf is not None and len(class_ids):
        scores = crf_probs(image, scores, crf)
    return np.asarray([0, *class_ids], np.uint8)[scores.argmax(0)]


def check_alphas(low_alpha: float, high_alpha: float) -> None:
    if not (np.isfinite(low_alpha) and np.isfinite(high_alpha) and 0 < low_alpha < high_alpha):
        raise ValueError(
            f"affinity labels: need 0 < low_alpha < high_alpha (low: strong background, confident "
            f"foreground), got low_alpha={low_alpha!r}, high_alpha={high_alpha!r}"
        )


def confident_labels(
    image: np.ndarray,
    cams: np.ndarray,
    class_ids: Sequence[int],
    *,
    low_alpha: float = 4,
    high_alpha: float = 32,
    crf: dict | None,
    saliency_gate: float | None = None,
    saliency: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) uint8: class ids where confident foreground, 0 where confident background, 255 between.

    ``cams`` (K, H, W) in [0, 1] for the K ``class_ids``; ``image`` (H, W, 3) uint8 (CRF only);
    ``crf``: CRF params (see :mod:`wsss_core.pseudo.crf`) or None for none. ``saliency_gate``: None, or
    a threshold in (0, 1) on ``saliency`` (H, W) in [0, 1]: foreground kept where saliency > gate,
    background where saliency <= gate.
    """
    check_alphas(low_alpha, high_alpha)
    check_gate(saliency_gate)
    cams, class_ids = image_cams("affinity labels", image, cams, class_ids)
    fg = alpha_labels(image, cams, class_ids, alpha=low_alpha, crf=crf)
    bg = alpha_labels(image, cams, class_ids, alpha=high_alpha, crf=crf)
    out = np.where(fg == 0, np.uint8(IGNORE_INDEX), fg)
    out[bg == 0] = 0
    if saliency_gate is not None and len(class_ids):  # no class: salient regions are background too
        if saliency is None or saliency.shape != out.shape:
            got = None if saliency is None else saliency.shape
            raise ValueError(f"affinity labels: saliency_gate needs a saliency map of shape {out.shape}, got {got}")
        salient = saliency > saliency_gate
        out[(out == 0) & salient] = IGNORE_INDEX
        out[(out != 0) & (out != IGNORE_INDEX) & ~salient] = IGNORE_INDEX
    return out


def check_gate(saliency_gate: float | None) -> None:
    if saliency_gate is not None and not (0 < saliency_gate < 1):
        raise ValueError(f"affinity.saliency_gate: need null or a number in (0, 1), got {saliency_gate!r}")


def make_affinity_labels(
    cam_h5: str | os.PathLike,
    dataset_root: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    *,
    low_alpha: float = 4,
    high_alpha: float = 32,
    crf: dict | None,
    saliency_gate: float | None = None,
    saliency_h5: str | os.PathLike | None = None,
    workers: int = 1,
) -> dict:
    """Write ``<out_dir>/<id>.png`` (VOC palette, 255 = void) for every image of ``split``.

    The dataset loop is :func:`wsss_core.pseudo.labels.write_label_folder` (store checks naming
    the file, atomic folder, forked ``workers``). ``saliency_gate`` needs the saliency store
    ``saliency_h5`` (:func:`wsss_core.pseudo.saliency.make_saliency`). Returns ``{"images",
    "all_void_images", "low_alpha", "high_alpha", "crf", "saliency_gate", "seconds"}``.
    """
    start = time.perf_counter()
    check_alphas(low_alpha, high_alpha)
    check_gate(saliency_gate)
    if (saliency_gate is None) != (saliency_h5 is None):
        raise ValueError(
            f"affinity labels: saliency_gate ({saliency_gate!r}) and a saliency store ({saliency_h5!r}) go together"
        )
    label_fn = partial(
        confident_labels, low_alpha=low_alpha, high_alpha=high_alpha, crf=crf, saliency_gate=saliency_gate
    )
    done = write_label_folder(
        cam_h5, dataset_root, split, out_dir, label_fn=label_fn, workers=workers, saliency_h5=saliency_h5
    )
    return {
        **done,
        "low_alpha": float(low_alpha),
        "high_alpha": float(high_alpha),
        "crf": crf is not None,
        "saliency_gate": saliency_gate,
        "seconds": round(time.perf_counter() - start, 3),
    }
