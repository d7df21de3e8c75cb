"""Evaluate a folder of label-map PNGs against the dataset's ground-truth masks.

Pseudo labels and the segmentation network's predictions are both folders of
``<image id>.png`` label maps, so both go through this one function and their mIoU
is comparable by construction (same confusion matrix, :mod:`wsss_core.metrics`).

Pseudo labels leave uncertain pixels void (255). Those pixels are skipped, like
void ground truth, so mIoU measures the labels' *precision where they speak*;
``coverage`` (the percentage of non-void ground-truth pixels that carry a label)
says how much they speak. Both are needed: marking everything void but one sure
pixel would otherwise score perfectly. A dense prediction has coverage 100.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.fileio import atomic_file
from wsss_core.metrics import confusion_matrix, miou, per_class_table
from wsss_core.parallel import fork_map_chunks
from wsss_core.results import write_summary_rows


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 label map from a palette (P) or greyscale (L) PNG: pixel value = class id, 255 = void."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label map not found")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            labels = np.array(img) if mode in ("P", "L") else None
    except Exception as err:  # PIL raises many types for broken files
        raise ValueError(f"{path}: unreadable label map ({err})") from err
    if labels is None:
        raise ValueError(f"{path}: label map mode {mode}, expected a palette (P) or L PNG of class ids")
    return labels


def _confusion_part(label_dir: str, root: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(confusion matrix, [gt_pixels, labelled_pixels]) over ``ids``."""
    dataset = VOCDataset(root)
    C = dataset.num_classes
    conf = np.zeros((C, C), np.int64)
    counts = np.zeros(2, np.int64)
    for image_id in ids:
        label_path = Path(label_dir) / f"{image_id}.png"
        labels = read_label_png(label_path)
        gt = dataset.load_mask(image_id)
        if labels.shape != gt.shape:
            raise ValueError(
                f"{label_path}: label map is {labels.shape} (H, W) but the mask "
                f"{dataset.mask_path(image_id)} is {gt.shape}"
            )
        # A void label removes the pixel from the count, exactly like void ground truth does.
        counted_gt = np.where(labels == IGNORE_INDEX, IGNORE_INDEX, gt)
        try:
            conf += confusion_matrix(counted_gt, labels, C, IGNORE_INDEX)
        except ValueError as err:
            raise ValueError(f"{label_path} vs {dataset.mask_path(image_id)}: {err}") from err
        counts += [np.count_nonzero(gt != IGNORE_INDEX), np.count_nonzero(counted_gt != IGNORE_INDEX)]
    return conf, counts


def label_confusion(
    label_dir: str | os.PathLike, dataset_root: str | os.PathLike, split: str, workers: int = 1
) -> tuple[np.ndarray, dict]:
    """Confusion matrix (C, C) over pixels whose ground truth and label are both non-void, and counts
    ``{"images", "gt_pixels" (non-void GT), "labelled_pixels" (non-void GT with a non-void label)}``.

    Every ``<label_dir>/<id>.png`` of the split must exist (checked before any work).
    ``workers > 1`` splits the images over forked processes; the result does not depend on it.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    label_dir, dataset = Path(label_dir), VOCDataset(dataset_root)
    if not label_dir.is_dir():
        raise FileNotFoundError(f"{label_dir}: label folder not found")
    ids = dataset.ids(split)
    missing = [label_dir / f"{i}.png" for i in ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{missing[0]}: label map not found{more} (split '{split}' of {dataset.root})")
    task = partial(_confusion_part, str(label_dir), str(dataset.root))
    if workers > 1 and len(ids) > 1:
        parts = fork_map_chunks(task, ids, workers)
        conf, counts = sum(p[0] for p in parts), sum(p[1] for p in parts)
    else:
        conf, counts = task(ids)
    return conf, {"images": len(ids), "gt_pixels": int(counts[0]), "labelled_pixels": int(counts[1])}


def evaluate_label_dir(
    label_dir: str | os.PathLike,
    dataset_root: str | os.PathLike,
    split: str,
    *,
    stage: str,
    method: str,
    out_per_class_csv: str | os.PathLike,
    summary_row_csv: str | os.PathLike,
    workers: int = 1,
) -> dict:
    """Score ``label_dir`` on ``split``; write the per-class table and the summary row; return the row.

    Row: ``{"stage", "method", "split", "mIoU", "coverage", "images"}``, mIoU and coverage in percent.
    The per-class table (IoU, precision, recall in percent) counts labelled pixels only.
    """
    conf, counts = label_confusion(label_dir, dataset_root, split, workers)
    if counts["gt_pixels"] == 0:
        raise ValueError(f"{dataset_root}: split '{split}' has no labelled (non-void) ground-truth pixels")
    dataset = VOCDataset(dataset_root)
    per_class = per_class_table(conf, dataset.classes)
    per_class[["IoU", "precision", "recall"]] *= 100
    row = {
        "stage": stage,
        "method": method,
        "split": split,
        "mIoU": 100 * miou(conf),  # NaN when no pixel carries a label; coverage then says 0
        "coverage": round(100 * counts["labelled_pixels"] / counts["gt_pixels"], 2),
        "images": counts["images"],
    }
    with atomic_file(out_per_class_csv) as tmp:
        per_class.to_csv(tmp, index=False)
    write_summary_rows(summary_row_csv, [row])
    return row
