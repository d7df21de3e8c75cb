"""Validate a dataset up front, one part at a time, then describe it.

The workflow checks a dataset in six parts (:data:`wsss_core.data.fingerprint.PARTS`): the image-level labels,
the images and the masks of the train split and of the eval split. Each part is a job of its own (rule
validate_dataset) whose small JSON output is the input of every step that reads that part, so no step starts on
a broken dataset, and a changed val mask re-checks the val masks and reruns the evaluations, nothing else.
:func:`summarize_dataset` then describes the checked dataset for people (dataset_summary.json,
class_counts.csv); no step reads it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from wsss_core.data.voc_layout import KINDS, DatasetError, VOCDataset
from wsss_core.fileio import atomic_file, write_text


def validate_part(
    root: str | Path, split: str, kind: str, *, require_masks: bool, out_json: str | Path, workers: int = 4
) -> dict:
    """Check the ``kind`` (labels | images | masks) of every image of ``split`` and record the part in ``out_json``.

    Raises :class:`~wsss_core.data.voc_layout.DatasetError` listing every problem, each with its file name,
    and writes nothing in that case. Masks are checked where present, and required when ``require_masks``.
    """
    if kind not in KINDS:
        raise ValueError(f"argument kind: {kind!r} is not one of {KINDS}")
    start = time.perf_counter()
    ds = VOCDataset(root)
    problems = ds.validate([split], require_masks=require_masks, workers=workers, kinds=(kind,))
    if problems:
        raise DatasetError(ds.root, problems)
    ids = ds.ids(split)
    record = {"split": split, "kind": kind, "images": len(ids), "classes": list(ds.classes)}
    if kind == "labels":
        record["label_source"] = ds.label_source
    if kind == "masks":
        record["with_mask"] = int(sum(ds.has_mask(i) for i in ids))
    write_text(out_json, json.dumps(record, indent=2) + "\n")
    print(f"{ds.root}: {kind} of split '{split}' ({len(ids)} images) valid in {time.perf_counter() - start:.2f} s")
    return record


def summarize_dataset(
    root: str | Path, *, train_split: str, eval_split: str, summary_json: str | Path, class_counts_csv: str | Path
) -> dict:
    """Describe a dataset whose parts passed :func:`validate_part`: images, masks and labels per split, and
    the images per class (``class_counts_csv``)."""
    ds = VOCDataset(root)
    rows = []
    splits = {}
    for split in dict.fromkeys([train_split, eval_split]):
        ids = ds.ids(split)
        labels = ds.label_matrix(ids)
        splits[split] = {
            "images": len(ids),
            "with_mask": int(sum(ds.has_mask(i) for i in ids)),
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
    }
    with atomic_file(class_counts_csv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    write_text(summary_json, json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary
