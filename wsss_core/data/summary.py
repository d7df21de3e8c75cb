"""Validate a dataset up front and describe it (the data stage's last step).

The summary JSON is what later stages take as input: it exists only if every image,
mask and label of the splits they use passed :meth:`VOCDataset.validate`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from wsss_core.data.voc_layout import DatasetError, VOCDataset
from wsss_core.fileio import atomic_file, write_text


def summarize_dataset(
    root: str | Path,
    *,
    train_split: str,
    eval_split: str,
    summary_json: str | Path,
    class_counts_csv: str | Path,
    workers: int = 4,
) -> dict:
    """Check ``train_split`` (labels required) and ``eval_split`` (masks required), then summarise.

    Raises :class:`~wsss_core.data.voc_layout.DatasetError` listing every problem,
    each with its file name, and writes nothing in that case.
    """
    start = time.perf_counter()
    ds = VOCDataset(root)
    # Training needs image labels only (masks optional); evaluation needs masks.
    problems = ds.validate([train_split], require_masks=train_split == eval_split, workers=workers)
    if eval_split != train_split:
        problems += ds.validate([eval_split], require_masks=True, workers=workers)
    if problems:
        raise DatasetError(ds.root, list(dict.fromkeys(problems)))

    rows = []
    splits = {}
    for split in dict.fromkeys([train_split, eval_split]):
        ids = ds.ids(split)
        labels = ds.label_matrix(ids)
        masks = sum(ds.has_mask(i) for i in ids)
        splits[split] = {
            "images": len(ids),
            "with_mask": int(masks),
            "multi_label": int((labels.sum(1) > 1).sum()),
            "without_label": int((labels.sum(1) == 0).sum()),
            "mean_labels_per_image": round(float(labels.sum(1).mean()), 4),
        }
        for c, name in enumerate(ds.classes[1:], start=1):
            rows.append({"split": split, "class_id": c, "class": name, "images": int(labels[:, c - 1].sum())})

    summary = {
        "root": str(Path(root).resolve()),
        "classes": list(ds.classes),
        "label_source": ds.label_source,
        "splits": splits,
        "train_split": train_split,
        "eval_split": eval_split,
        "seconds": round(time.perf_counter() - start, 3),
    }
    with atomic_file(class_counts_csv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    write_text(summary_json, json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary
