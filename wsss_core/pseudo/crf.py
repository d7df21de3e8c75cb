"""Fully connected CRF (Kraehenbuehl & Koltun 2011) to snap label maps to image edges.

CAMs are coarse (computed at stride 16 and upsampled), so label maps taken from
them bleed across object boundaries. A dense CRF with a Gaussian smoothness kernel
and a bilateral appearance kernel (pixels close in position *and* colour prefer the
same label) pulls the boundaries onto colour edges, as PSA and IRN do before
training on pseudo labels. Mean-field inference comes from ``pydensecrf``
(the ``pydensecrf2`` package); this module only builds its inputs and checks them.

Parameters are one dict with every key of :data:`CRF_KEYS`; the IRN / PSA values are
``iterations 10, gt_prob 0.7, pos_xy_std 3, pos_w 3, bi_xy_std 50, bi_rgb_std 5, bi_w 10``.
The dense CRF is single-threaded: callers parallelise over images.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

CRF_KEYS = ("iterations", "gt_prob", "pos_xy_std", "pos_w", "bi_xy_std", "bi_rgb_std", "bi_w")
# Probabilities are clipped before the log so a zero never becomes an infinite unary (PSA/IRN use the same 1e-5).
PROB_CLIP = 1e-5


def _check_params(params: dict) -> None:
    if not isinstance(params, dict):
        raise ValueError(f"CRF params must be a dict with keys {CRF_KEYS}, got {type(params).__name__}")
    for key in CRF_KEYS:
        if key not in params:
            raise ValueError(f"CRF params lack key '{key}' (need all of {CRF_KEYS})")
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"CRF param '{key}' must be a finite number, got {value!r}")
    iterations = params["iterations"]
    if not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"CRF param 'iterations' must be an integer >= 0, got {iterations!r}")
    if not 0.0 < params["gt_prob"] < 1.0:
        raise ValueError(f"CRF param 'gt_prob' must be in (0, 1), got {params['gt_prob']!r}")
    for key in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
        if params[key] <= 0:
            raise ValueError(f"CRF param '{key}' must be > 0, got {params[key]!r}")
    for key in ("pos_w", "bi_w"):
        if params[key] < 0:
            raise ValueError(f"CRF param '{key}' must be >= 0, got {params[key]!r}")


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"CRF image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    # pydensecrf reads the raw buffer: a strided view (a crop, a flip) would be read wrongly.
    return np.ascontiguousarray(image)


def _infer(image: np.ndarray, unary: np.ndarray, n_labels: int, params: dict) -> np.ndarray:
    """Marginals (n_labels, H, W) float32 after ``params['iterations']`` mean-field steps."""
    h, w = image.shape[:2]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=float(params["pos_xy_std"]), compat=float(params["pos_w"]))
    crf.addPairwiseBilateral(
        sxy=float(params["bi_xy_std"]), srgb=float(params["bi_rgb_std"]), rgbim=image, compat=float(params["bi_w"])
    )
    q = crf.inference(int(params["iterations"]))
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


def crf_probs(image: np.ndarray, probs: np.ndarray, params: dict) -> np.ndarray:
    """Refine per-pixel distributions ``probs`` (K, H, W) over K labels on ``image`` (H, W, 3) uint8.

    Unary = -log(clip(probs, 1e-5, 1)); returns the (K, H, W) float32 marginals, which sum to 1 per pixel.
    """
    _check_params(params)
    image = _check_image(image)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 1:
        raise ValueError(f"CRF probs must be (K >= 1, H, W) matching the image {image.shape[:2]}, got {probs.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0:
        raise ValueError("CRF probs must be finite and >= 0")
    unary = -np.log(np.clip(probs, PROB_CLIP, 1.0)).reshape(probs.shape[0], -1)
    return _infer(image, unary, probs.shape[0], params)


def crf_labels(image: np.ndarray, labels: np.ndarray, label_set: Sequence[int], params: dict) -> np.ndarray:
    """Refine a hard label map ``labels`` (H, W) uint8 whose values all lie in ``label_set``.

    Each pixel's own label gets probability ``params['gt_prob']``, the rest share the
    remainder (IRN's ``crf_inference_label``); returns (H, W) uint8 with values from
    ``label_set``. ``label_set`` is usually ``[0, *image classes]`` so the CRF can only
    choose among the image's own labels. A single label has nothing to decide: ``labels``
    comes back unchanged.
    """
    _check_params(params)
    image = _check_image(image)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape != image.shape[:2] or labels.dtype != np.uint8:
        raise ValueError(
            f"CRF labels must be (H, W) uint8 matching the image {image.shape[:2]}, "
            f"got {labels.shape} {labels.dtype}"
        )
    keys = np.asarray(list(label_set), dtype=np.int64).reshape(-1)
    if keys.size == 0 or np.unique(keys).size != keys.size or keys.min() < 0 or keys.max() > 255:
        raise ValueError(f"label_set must be distinct values in 0..255, got {keys.tolist()}")
    # Map label values to 0..n-1 (pydensecrf's label indices) through a lookup table; -1 marks strangers.
    index = np.full(256, -1, np.int64)
    index[keys] = np.arange(keys.size)
    indices = index[labels]
    if (indices < 0).any():
        strangers = sorted(set(np.unique(labels[indices < 0]).tolist()))
        raise ValueError(f"label map has value(s) {strangers} not in label_set {keys.tolist()}")
    if keys.size == 1:
        return labels.copy()
    unary = unary_from_labels(indices, keys.size, gt_prob=float(params["gt_prob"]), zero_unsure=False)
    q = _infer(image, unary, keys.size, params)
    return keys.astype(np.uint8)[q.argmax(0)]
