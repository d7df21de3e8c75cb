"""Merge CAM stores of the same images, per class and pixel: their maximum, or their geometric mean.

Every store holds per-class maps scaled to a maximum of 1.

- ``max`` (adversarial erasing): the rounds each find another part of an object, and the pixel-wise
  maximum is, at any threshold t, exactly the union of the rounds' regions above t - the "merged mined
  regions" - so the threshold sweep of ``cams/evaluate.py`` applies to it unchanged.
- ``geometric_mean`` (``cams.label_source: with_baseline``): two classifiers' CAMs of the same classes;
  a pixel scores high for a class only where both score it high, so where one classifier's map spreads
  onto another object the other's low score there pulls it down. Each class's mean map is scaled to a
  maximum of 1 again (its peak is below 1 where the stores' peaks are apart).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from wsss_core.cams.store import CAMReader, CAMStoreError, CAMWriter, check_store_covers
from wsss_core.data.voc_layout import VOCDataset

log = logging.getLogger(__name__)


HOW = ("max", "geometric_mean")


def merge_cam_stores(paths: Sequence[str | os.PathLike], dataset_root, split: str, out_h5, how: str = "max") -> dict:
    """Write the pixel-wise ``how`` (one of :data:`HOW`) of the CAM stores ``paths`` for every image of ``split``
    to ``out_h5``."""
    if not paths:
        raise ValueError("merge_cam_stores: no CAM stores to merge")
    if how not in HOW:
        raise ValueError(f"merge_cam_stores: how must be one of {HOW}, got {how!r}")
    ds = VOCDataset(dataset_root)
    ids = ds.ids(split)
    readers = [CAMReader(p) for p in paths]
    try:
        for reader in readers:
            check_store_covers(reader, ds.classes, ids)
        first = readers[0]
        attrs = {"split": split, "merged_from": [str(p) for p in paths], "merged_by": how}
        sha = "+".join(str(r.attrs["checkpoint_sha256"]) for r in readers)
        with CAMWriter(
            out_h5,
            classes=list(ds.classes),
            scales=first.attrs["scales"],
            stride=first.attrs["stride"],
            checkpoint_sha256=sha,
            extra_attrs=attrs,
        ) as writer:
            for image_id in tqdm(ids, desc="merge CAMs", mininterval=10, ascii=True):
                maps, class_ids = first.read(image_id)
                stack = [maps]
                for reader in readers[1:]:
                    other, other_ids = reader.read(image_id)
                    if other_ids != class_ids or other.shape != maps.shape:
                        raise CAMStoreError(
                            f"{reader.path}: image '{image_id}' has maps {other.shape} of classes "
                            f"{list(other_ids)}, {first.path} {maps.shape} of {list(class_ids)}"
                        )
                    stack.append(other)
                writer.write(image_id, _merged(stack, how).astype(maps.dtype), class_ids)
    finally:
        for reader in readers:
            reader.close()
    log.info("merged %d CAM stores for %d images into %s", len(paths), len(ids), out_h5)
    return {"images": len(ids), "stores": len(paths)}


def _merged(stack: list[np.ndarray], how: str) -> np.ndarray:
    """The (K, H, W) merge of same-shaped CAM stacks."""
    if how == "max":
        return np.maximum.reduce(stack)
    mean = np.prod(np.clip(np.asarray(stack, np.float64), 0.0, None), axis=0) ** (1.0 / len(stack))
    peaks = mean.max(axis=(1, 2), keepdims=True, initial=0.0)
    return np.where(peaks > 0, mean / np.maximum(peaks, 1e-12), 0.0)
