"""Merge CAM stores of the same images: per class and pixel, the maximum over the stores.

Adversarial erasing's rounds each find another part of an object; every store holds per-class maps
scaled to a maximum of 1, so the pixel-wise maximum is, at any threshold t, exactly the union of
the rounds' regions above t - the "merged mined regions" - and the threshold sweep of
``cams/evaluate.py`` applies to it unchanged.
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


def merge_cam_stores(paths: Sequence[str | os.PathLike], dataset_root, split: str, out_h5) -> dict:
    """Write the pixel-wise maximum of the CAM stores ``paths`` for every image of ``split`` to ``out_h5``."""
    if not paths:
        raise ValueError("merge_cam_stores: no CAM stores to merge")
    ds = VOCDataset(dataset_root)
    ids = ds.ids(split)
    readers = [CAMReader(p) for p in paths]
    try:
        for reader in readers:
            check_store_covers(reader, ds.classes, ids)
        first = readers[0]
        attrs = {"split": split, "merged_from": [str(p) for p in paths]}
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
                for reader in readers[1:]:
                    other, other_ids = reader.read(image_id)
                    if other_ids != class_ids or other.shape != maps.shape:
                        raise CAMStoreError(
                            f"{reader.path}: image '{image_id}' has maps {other.shape} of classes "
                            f"{list(other_ids)}, {first.path} {maps.shape} of {list(class_ids)}"
                        )
                    maps = np.maximum(maps, other)
                writer.write(image_id, maps, class_ids)
    finally:
        for reader in readers:
            reader.close()
    log.info("merged %d CAM stores for %d images into %s", len(paths), len(ids), out_h5)
    return {"images": len(ids), "stores": len(paths)}
