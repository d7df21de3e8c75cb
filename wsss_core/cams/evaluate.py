"""CAM quality: mIoU of CAM-derived label maps for every background threshold, in one pass.

The label map at threshold ``t`` (as in PSA): a pixel takes the class of its highest
CAM when that value is strictly greater than ``t``, else background 0; equivalently
an argmax over ``[t, cams...]`` where background wins ties. :func:`cam_labels` is
that rule, for stages that turn CAMs into labels.

Why one pass: a sweep over 61 thresholds that rebuilt every label map would read
and compare each pixel 61 times. Instead, per pixel we take the highest CAM value
``v`` and its class ``c`` and count ``k``, the number of thresholds strictly below
``v`` (a binary search): the pixel is foreground ``c`` for the first ``k`` thresholds
and background for the rest. A histogram over ``(gt, c, k)`` therefore holds every
threshold's confusion matrix, recovered exactly by cumulative sums over ``k``.
Values are compared in float64; stored float16 CAM values are exact there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from wsss_core.cams.store import CAMReader, check_store_covers
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.fileio import atomic_file, write_text
from wsss_core.metrics import miou, per_class_table
from wsss_core.parallel import fork_map_chunks
from wsss_core.results import write_summary_rows


def threshold_grid(lo: float, hi: float, step: float) -> np.ndarray:
    """Thresholds lo, lo + step, ..., hi (inclusive), rounded so 0.07 is 0.07, not 0.07000000000000001."""
    return np.round(np.arange(lo, hi + step / 2, step), 6)


DEFAULT_THRESHOLDS = threshold_grid(0.0, 0.6, 0.01)


def cam_labels(cams: np.ndarray, class_ids: Sequence[int], threshold: float) -> np.ndarray:
    """uint8 (H, W) label map: the top CAM's class where its value > ``threshold``, else 0."""
    cams = np.asarray(cams)
    if not len(class_ids):
        return np.zeros(cams.shape[1:], np.uint8)
    labels = np.asarray(class_ids, np.uint8)[cams.argmax(0)]
    return np.where(cams.max(0).astype(np.float64) > threshold, labels, 0).astype(np.uint8)


def _check_thresholds(thresholds) -> np.ndarray:
    thresholds = np.asarray(thresholds, np.float64).reshape(-1)
    if thresholds.size == 0 or not np.isfinite(thresholds).all() or (np.diff(thresholds) <= 0).any():
        raise ValueError(f"thresholds must be finite, non-empty and strictly increasing, got {thresholds.tolist()}")
    return thresholds


def _histogram(reader: CAMReader, dataset: VOCDataset, ids: Sequence[str], thresholds: np.ndarray) -> np.ndarray:
    """Pixel counts (C, C, T+1) over (ground-truth class, top CAM class, thresholds below its value)."""
    C, T1 = dataset.num_classes, len(thresholds) + 1
    # Ground-truth rows 0..C-1, then void (C) and ids outside the class list (C + 1): one
    # bincount over whole images, cheaper than selecting the non-void pixels first.
    row = np.full(256, C + 1, np.int64)
    row[:C] = np.arange(C)
    row[IGNORE_INDEX] = C
    hist = np.zeros((C + 2) * C * T1, np.int64)
    for image_id in ids:
        cams, class_ids = reader.read(image_id)
        mask = dataset.load_mask(image_id)
        if cams.shape[1:] != mask.shape:
            raise ValueError(
                f"{reader.path}: image '{image_id}': CAMs are {cams.shape[1:]} (H, W) but its mask "
                f"{dataset.mask_path(image_id)} is {mask.shape}; CAMs must be stored at image resolution"
            )
        if class_ids:
            cls = np.asarray(class_ids, np.int64)[cams.argmax(0)]
            k = np.searchsorted(thresholds, cams.max(0), side="left")  # compares in float64
        else:  # no labels: background at every threshold
            cls = k = 0
        counts = np.bincount(((row[mask] * C + cls) * T1 + k).ravel(), minlength=hist.size)
        if counts[(C + 1) * C * T1 :].any():
            bad = sorted(set(np.unique(mask).tolist()) - set(range(C)) - {IGNORE_INDEX})
            raise ValueError(f"{dataset.mask_path(image_id)}: class ids {bad} outside 0..{C - 1} (and {IGNORE_INDEX})")
        hist += counts
    return hist.reshape(C + 2, C, T1)[:C]


def _histogram_task(cam_h5: str, root: str, ids: list[str], thresholds: np.ndarray) -> np.ndarray:
    """One worker's share; it opens its own reader (HDF5 handles must not cross processes)."""
    with CAMReader(cam_h5) as reader:
        return _histogram(reader, VOCDataset(root), ids, thresholds)


def threshold_confusions(
    reader_or_path: CAMReader | str | os.PathLike,
    dataset: VOCDataset,
    split_ids: Sequence[str],
    thresholds,
    workers: int = 1,
) -> np.ndarray:
    """Confusion matrices (T, C, C), one per threshold, from a single pass over the images.

    ``workers > 1`` splits the images over forked processes, each opening the store
    itself; that needs the store's path, and no HDF5 handle on it is open at the fork.
    (Fork, not spawn: spawn re-runs the calling script, and Snakemake scripts have no
    ``__main__`` guard.)
    """
    thresholds = _check_thresholds(thresholds)
    parallel = workers > 1 and len(split_ids) > 1
    own = not isinstance(reader_or_path, CAMReader)
    if parallel and not own:
        raise ValueError(f"{reader_or_path.path}: workers > 1 needs the CAM store's path, not an open reader")
    reader = CAMReader(reader_or_path) if own else reader_or_path
    try:
        check_store_covers(reader, dataset.classes, split_ids)
        if not parallel:
            hist = _histogram(reader, dataset, split_ids, thresholds)
    finally:
        if own:
            reader.close()
    if parallel:
        task = partial(_histogram_task, str(reader_or_path), str(dataset.root), thresholds=thresholds)
        hist = sum(fork_map_chunks(task, split_ids, workers))
    tail = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]  # tail[g, c, k] = pixels with >= k thresholds below
    above = tail[..., 1:]  # above[g, c, j]: top CAM of class c is > threshold j
    conf = np.moveaxis(above, -1, 0).copy()
    conf[:, :, 0] += hist.sum(axis=(1, 2))[None, :] - above.sum(axis=1).T
    return conf


def sweep_table(confusions: np.ndarray, thresholds) -> pd.DataFrame:
    """Per threshold: mIoU and foreground-vs-background precision/recall, all in percent."""
    rows = []
    for t, conf in zip(_check_thresholds(thresholds), confusions):
        fg_hit, fg_pred, fg_gt = conf[1:, 1:].sum(), conf[:, 1:].sum(), conf[1:, :].sum()
        rows.append(
            {
                "threshold": float(t),
                "mIoU": 100 * miou(conf),
                "fg_precision": 100 * fg_hit / fg_pred if fg_pred else float("nan"),
                "fg_recall": 100 * fg_hit / fg_gt if fg_gt else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def sweep(reader_or_path, dataset: VOCDataset, split_ids: Sequence[str], thresholds, workers: int = 1) -> pd.DataFrame:
    """The threshold sweep table (see :func:`sweep_table`) for ``split_ids``."""
    return sweep_table(threshold_confusions(reader_or_path, dataset, split_ids, thresholds, workers), thresholds)


def _plot(table: pd.DataFrame, best: int, title: str, out_png: str | os.PathLike) -> None:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(table["threshold"], table["mIoU"], marker=".", label="mIoU")
    t, m = table["threshold"].iloc[best], table["mIoU"].iloc[best]
    ax.axvline(t, color="tab:red", linestyle="--", linewidth=1)
    ax.plot([t], [m], "o", color="tab:red", label=f"best: t = {t:g}, mIoU = {m:.2f} %")
    ax.set(xlabel="background threshold", ylabel="mIoU (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def evaluate_cams(
    cam_h5: str | os.PathLike,
    dataset_root: str | os.PathLike,
    split: str,
    *,
    thresholds=DEFAULT_THRESHOLDS,
    out_csv: str | os.PathLike,
    out_png: str | os.PathLike,
    out_best_json: str | os.PathLike,
    out_per_class_csv: str | os.PathLike,
    method: str,
    summary_row_csv: str | os.PathLike,
    workers: int = 1,
) -> dict:
    """Sweep the background threshold on ``split``; write the sweep, its plot, the best threshold,
    per-class IoU at that threshold and the summary row. Returns the best-threshold record.

    The best threshold is the one with the highest mIoU (the lowest such threshold on ties).
    mIoU, IoU, precision and recall in the files are percentages (see :mod:`wsss_core.metrics`).
    """
    thresholds = _check_thresholds(thresholds)
    dataset = VOCDataset(dataset_root)
    ids = dataset.ids(split)
    confusions = threshold_confusions(cam_h5, dataset, ids, thresholds, workers)
    if confusions[0].sum() == 0:
        raise ValueError(f"{dataset.root}: split '{split}' has no labelled (non-void) pixels to evaluate")
    table = sweep_table(confusions, thresholds)
    best = int(table["mIoU"].to_numpy().argmax())
    record = {
        "threshold": float(thresholds[best]),
        "mIoU": float(table["mIoU"].iloc[best]),
        "split": split,
        "method": method,
        "images": len(ids),
    }
    per_class = per_class_table(confusions[best], dataset.classes)
    per_class[["IoU", "precision", "recall"]] *= 100

    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_file(out_per_class_csv) as tmp:
        per_class.to_csv(tmp, index=False)
    _plot(table, best, f"CAMs of '{method}' on {split} ({len(ids)} images)", out_png)
    write_text(out_best_json, json.dumps(record, indent=2) + "\n")
    write_summary_rows(
        summary_row_csv,
        [
            {
                "stage": "cams",
                "method": method,
                "split": split,
                "mIoU": record["mIoU"],
                "threshold": record["threshold"],
                "images": len(ids),
            }
        ],
    )
    print(json.dumps(record, indent=2))
    return record
