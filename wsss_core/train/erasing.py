"""Adversarial erasing (Wei et al., CVPR 2017): retrain on images whose mined regions are erased.

Round 1 is an ordinary classifier; its CAMs mark the most discriminative region of each object.
Round r trains a fresh classifier on the training images with every region mined in rounds 1..r-1
(a stored CAM above ``classifier.erasing.threshold`` for any of the image's classes) painted over
with the mean colour, so the network must find other evidence for the same labels. The rounds' CAMs
are then merged (``cams/merge.py``: per class and pixel the maximum over rounds, so the union of the
mined regions at every threshold). The erasing happens on the full-size photo before augmentation,
so the erased region moves with the random crop and flip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss_core.cams.store import CAMReader, CAMStoreError, check_store_covers
from wsss_core.data.voc_layout import VOCDataset


class ErasedDataset(VOCDataset):
    """A VOC dataset whose images come with the regions mined in earlier rounds filled with ``fill``."""

    def __init__(self, root, cam_stores: Sequence[str | os.PathLike], threshold: float, fill: Sequence[int]):
        super().__init__(root)
        if not cam_stores:
            raise ValueError("adversarial erasing needs the CAM stores of the earlier rounds")
        self.cam_stores = [Path(p) for p in cam_stores]
        self.threshold = float(threshold)
        self.fill = np.asarray(fill, dtype=np.uint8)
        self._readers, self._pid = None, None

    def readers(self) -> list[CAMReader]:
        # opened per process: DataLoader workers must not share the parent's HDF5 handles
        if self._pid != os.getpid():
            self._readers, self._pid = [CAMReader(p) for p in self.cam_stores], os.getpid()
        return self._readers

    def check_stores(self, ids: Sequence[str]) -> None:
        """Raise naming the file unless every store has this dataset's classes and maps for all ``ids``."""
        for reader in self.readers():
            check_store_covers(reader, self.classes, ids)

    def erased(self, image_id: str) -> np.ndarray:
        """bool (H, W): the pixels of ``image_id`` mined by any earlier round."""
        mask = None
        for reader in self.readers():
            cams, _ = reader.read(image_id)
            region = (cams > self.threshold).any(axis=0) if len(cams) else np.zeros(cams.shape[1:], bool)
            mask = region if mask is None else mask | region
        return mask

    def load_image(self, image_id: str) -> np.ndarray:
        image = super().load_image(image_id)
        mask = self.erased(image_id)
        if mask.shape != image.shape[:2]:
            raise CAMStoreError(
                f"{self.cam_stores}: CAMs of '{image_id}' are {mask.shape[0]}x{mask.shape[1]}, "
                f"the image {image.shape[0]}x{image.shape[1]} (stores of another dataset?)"
            )
        image[mask] = self.fill
        return image

    def fingerprints(self) -> list[str]:
        """What identifies the erased images: the checkpoint each store's CAMs came from, and the threshold."""
        return [str(r.attrs["checkpoint_sha256"]) for r in self.readers()] + [repr(self.threshold)]
