"""Saliency maps on disk: the HDF5 store the pipeline reads, and user PNG folders imported into it.

Saliency says how much a pixel looks like part of *some* object, whatever its class; the
saliency pseudo-label recipe (:mod:`wsss_core.pseudo.saliency_labels`) takes its complement
as the background cue. One store per split, written once by :func:`wsss_core.pseudo.saliency.make_saliency`
and read by every pseudo-label worker. Layout::

    /              attrs: format, source ("u2netp" or "folder:<path>"), created_with, and the
                          writer's extras (model file and SHA-256, package version, ...)
    /<image id>    uint8 (H, W) at image resolution, 0 = background .. 255 = salient

uint8 because that is the precision saliency models and PNG files deliver (a quarter of float32's
size); readers get float32 in [0, 1]. The atomic write and the lock-free read are the CAM store's
(:class:`~wsss_core.cams.store.HDF5StoreWriter`, :class:`~wsss_core.cams.store.HDF5StoreReader`).

A user folder holds ``<image id>.png``, grayscale (mode L) 0..255 at the image's size. It is
checked as a whole before anything is written, so one run reports every missing or mis-sized
file instead of failing on them one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss_core import __version__
from wsss_core.cams.store import HDF5StoreReader, HDF5StoreWriter
from wsss_core.data.voc_layout import VOCDataset

FORMAT = "wsss-saliency-store-1"
SHOWN = 5  # problems named per kind in an error message; the rest are counted


class SaliencyStoreError(ValueError):
    """A saliency store or folder that cannot be used as asked; the message names the file or folder."""


class SaliencyWriter(HDF5StoreWriter):
    """Write a saliency store: ``with SaliencyWriter(path, source=...) as w: w.write(id, map)``."""

    def __init__(self, path: str | os.PathLike, *, source: str, extra_attrs: dict[str, Any] | None = None):
        clash = sorted(set(extra_attrs or {}) & {"format", "source", "created_with"})
        if clash:
            raise ValueError(f"{Path(path)}: extra attribute(s) {clash} would overwrite the store's own")
        attrs = {"format": FORMAT, "source": str(source), "created_with": f"wsss {__version__}"}
        super().__init__(path, {**attrs, **(extra_attrs or {})})

    def write(self, image_id: str, saliency: np.ndarray) -> None:
        """Store one (H, W) map: uint8 0..255 as is, or floats in [0, 1] (rounded to 0..255)."""
        where = self._new_entry(image_id)
        saliency = np.asarray(saliency)
        if saliency.ndim != 2 or 0 in saliency.shape:
            raise ValueError(f"{where}: saliency map of shape {saliency.shape}; expected (H, W)")
        if saliency.dtype != np.uint8:
            values = saliency.astype(np.float64)
            if not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
                raise ValueError(f"{where}: saliency values must be uint8, or finite floats in [0, 1]")
            saliency = np.rint(values * 255).astype(np.uint8)
        self._file.create_dataset(
            image_id, data=saliency, chunks=saliency.shape, compression="gzip", compression_opts=1, shuffle=True
        )


class SaliencyReader(HDF5StoreReader):
    """Read a saliency store (one reader per process, see :class:`~wsss_core.cams.store.HDF5StoreReader`)."""

    FORMAT = FORMAT
    KIND = "saliency store"
    ENTRY = "saliency map"
    Error = SaliencyStoreError

    def read_uint8(self, image_id: str) -> np.ndarray:
        """The stored (H, W) uint8 map, 0..255."""
        return self._entry(image_id)[()]

    def read(self, image_id: str) -> np.ndarray:
        """(H, W) float32 in [0, 1]."""
        return self.read_uint8(image_id).astype(np.float32) / 255.0


def _folder_problems(folder: Path, dataset: VOCDataset, ids: Sequence[str]) -> dict[str, list[str]]:
    """Problems by kind, each entry naming one file; reads PNG and JPEG headers only."""
    problems: dict[str, list[str]] = {"missing": [], "size": [], "mode": [], "unreadable": []}
    for image_id in ids:
        path = folder / f"{image_id}.png"
        if not path.is_file():
            problems["missing"].append(path.name)
            continue
        try:
            with Image.open(path) as png, Image.open(dataset.image_path(image_id)) as img:
                size, mode, want = png.size, png.mode, img.size
        except Exception as err:  # PIL raises many types for broken files
            problems["unreadable"].append(f"{path.name} ({err})")
            continue
        if size != want:
            problems["size"].append(f"{path.name} is {size[0]}x{size[1]}, its image is {want[0]}x{want[1]}")
        if mode != "L":
            problems["mode"].append(f"{path.name} has mode {mode}")
    return problems


def check_saliency_folder(folder: str | os.PathLike, dataset: VOCDataset, ids: Sequence[str], split: str) -> None:
    """Raise one :class:`SaliencyStoreError` naming ``folder`` and listing every unusable file of ``ids``.

    Each kind of problem (missing, size mismatch, not grayscale, unreadable) shows its first
    few files and a count, so a folder made for another split or image size is obvious at once.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SaliencyStoreError(f"saliency folder {folder}: not a folder")
    problems = _folder_problems(folder, dataset, ids)
    titles = {
        "missing": "missing PNG(s)",
        "size": "PNG(s) not the size of their image",
        "mode": "PNG(s) not grayscale (mode L, 0..255)",
        "unreadable": "unreadable PNG(s)",
    }
    lines = []
    for kind, found in problems.items():
        if found:
            more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
            lines.append(f"  {len(found)} {titles[kind]}: {'; '.join(found[:SHOWN])}{more}")
    if lines:
        raise SaliencyStoreError(
            f"saliency folder {folder}: unusable for split '{split}' ({len(ids)} images, one <image id>.png "
            "each expected):\n" + "\n".join(lines)
        )


def load_saliency_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 of a grayscale PNG (checked beforehand by :func:`check_saliency_folder`)."""
    with Image.open(path) as png:
        if png.mode != "L":
            raise SaliencyStoreError(f"{path}: saliency PNG has mode {png.mode}, expected grayscale L")
        return np.array(png)
