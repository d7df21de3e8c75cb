"""Segmentation metrics from one confusion matrix.

Every stage that reports an mIoU (CAMs, pseudo labels, segmentation network) goes
through these functions, so their numbers are comparable by construction.

Conventions:

* Values returned here are fractions in [0, 1]; files written for people (CSVs,
  JSON, plots, ``summary.csv``) report percentages, converted where they are written.
* Pixels whose ground truth is the void label (255) are skipped entirely, whatever
  was predicted there.
* A class absent from both the ground truth and the prediction of the evaluated
  images has an undefined IoU (0/0): it is NaN and :func:`miou` leaves it out of the
  mean. This is the standard VOC convention when evaluating a subset of images or a
  dataset where not every class occurs. A class present in only one of the two
  gets IoU 0 and counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Pixel counts ``conf[g, p]`` (int64, ``num_classes`` square): rows ground truth, columns prediction.

    Pixels with ``gt == ignore_index`` are skipped (their prediction is not checked).
    Raises ``ValueError`` naming the offending value for a ground-truth or predicted
    class outside ``0..num_classes-1`` on a counted pixel: such a value is a bug
    upstream, and silently dropping it would inflate the score.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} != prediction shape {pred.shape}")
    counted = gt != ignore_index
    g = gt[counted].astype(np.int64)
    p = pred[counted].astype(np.int64)
    for name, values in (("ground-truth", g), ("predicted", p)):
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(f"{name} class {int(bad[0])} outside 0..{num_classes - 1} (void is {ignore_index})")
    counts = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float64, NaN where ``den`` is 0 (undefined, not zero)."""
    num, den = num.astype(np.float64), den.astype(np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (GT + Pred - TP); NaN for classes absent from both."""
    conf = np.asarray(conf)
    tp = np.diag(conf)
    union = conf.sum(1) + conf.sum(0) - tp
    return _ratio(tp, union)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes with a defined IoU (see module docstring); NaN if none."""
    iou = iou_from_confusion(conf)
    defined = iou[~np.isnan(iou)]
    return float(defined.mean()) if defined.size else float("nan")


def per_class_table(conf: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per class: IoU, precision (TP/Pred), recall (TP/GT) as fractions, pixel counts.

    Undefined ratios (no pixels in the denominator) are NaN.
    """
    conf = np.asarray(conf)
    if conf.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix {conf.shape} does not match {len(class_names)} class names")
    tp, gt_pixels, pred_pixels = np.diag(conf), conf.sum(1), conf.sum(0)
    return pd.DataFrame(
        {
            "class": list(class_names),
            "IoU": iou_from_confusion(conf),
            "precision": _ratio(tp, pred_pixels),
            "recall": _ratio(tp, gt_pixels),
            "gt_pixels": gt_pixels.astype(np.int64),
            "pred_pixels": pred_pixels.astype(np.int64),
        }
    )


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of scores ``positive`` against ``negative``: the chance that a random positive scores above a
    random negative (Mann-Whitney U, ties counted half)."""
    from scipy.stats import rankdata

    n_p, n_n = len(positive), len(negative)
    if not (n_p and n_n):
        raise ValueError(f"ROC AUC needs scores of both kinds, got {n_p} positive and {n_n} negative")
    ranks = rankdata(np.concatenate([positive, negative]))
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n))
