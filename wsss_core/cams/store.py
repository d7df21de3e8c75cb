"""The CAM store: one HDF5 file per split holding every image's class activation maps.

CAM inference writes it once; threshold evaluation, pseudo-label generation and
AffinityNet read it, often from several worker processes at a time. Layout::

    /                      attrs: format, classes, scales, stride, checkpoint_sha256,
                                  created_with, and any extras of the writer
    /<image id>            float16 (K, H, W), values in [0, 1], one map per image label,
                           attrs: class_ids (K ints, ascending, each in 1..num_classes-1)

Only the image's own classes are stored (K is usually 1-3 of 20), which keeps a VOC
split to a few hundred MB; :meth:`CAMReader.dense` expands to all foreground classes.
Maps are stored at image resolution, in ascending class order, so an argmax over the
stored maps breaks ties exactly like an argmax over the dense maps would.

The file appears at its final path only when the writer's ``with`` block ends
cleanly, so a stage that finds it can trust it is complete. The atomic writer and the
lock-free reader are base classes shared with the saliency store
(:mod:`wsss_core.pseudo.saliency_store`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsss_core import __version__
from wsss_core.fileio import atomic_file

FORMAT = "wsss-cam-store-1"
_RESERVED = ("format", "classes", "scales", "stride", "checkpoint_sha256", "created_with")


class CAMStoreError(ValueError):
    """A CAM store that cannot be used as asked; the message names the file."""


class HDF5StoreWriter:
    """Base of the store writers: ``with Writer(path, ...) as w: w.write(...)``.

    Everything goes to a temporary sibling that is renamed onto ``path`` on a clean
    exit; after an exception nothing new is left and an older ``path`` is kept.
    Subclasses build the root attributes and one ``write`` per image.
    """

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any]):
        self.path = Path(path)
        self._attrs = dict(attrs)
        self._stack: contextlib.ExitStack | None = None
        self._file: h5py.File | None = None

    def __enter__(self):
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_file(self.path))
            self._file = stack.enter_context(h5py.File(tmp, "w"))
            self._file.attrs.update(self._attrs)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        stack, self._stack, self._file = self._stack, None, None
        return stack.__exit__(*exc)

    def _new_entry(self, image_id: str) -> str:
        """Check ``image_id`` can be written now; returns the "<file>: image '<id>'" prefix for messages."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: {type(self).__name__}.write called outside its 'with' block")
        where = f"{self.path}: image '{image_id}'"
        if not image_id or "/" in image_id or image_id in (".", ".."):
            raise ValueError(f"{where}: not usable as an HDF5 dataset name")
        if image_id in self._file:
            raise ValueError(f"{where}: written twice")
        return where


class CAMWriter(HDF5StoreWriter):
    """Write a CAM store (see :class:`HDF5StoreWriter` for the atomic rename)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        classes: Sequence[str],
        scales: Sequence[float],
        stride: int,
        checkpoint_sha256: str,
        extra_attrs: dict[str, Any] | None = None,
    ):
        clash = sorted(set(extra_attrs or {}) & set(_RESERVED))
        if clash:
            raise ValueError(f"{Path(path)}: extra attribute(s) {clash} would overwrite the store's own")
        self.classes = tuple(classes)
        super().__init__(
            path,
            {
                "format": FORMAT,
                "classes": list(self.classes),
                "scales": [float(s) for s in scales],
                "stride": int(stride),
                "checkpoint_sha256": str(checkpoint_sha256),
                "created_with": f"wsss {__version__}",
                **(extra_attrs or {}),
            },
        )

    def write(self, image_id: str, cams: np.ndarray, class_ids: Sequence[int]) -> None:
        """Store one image's maps: ``cams`` (K, H, W) in [0, 1] for the K ``class_ids``.

        An image without labels is stored as K = 0 maps of shape (0, H, W).
        """
        where = self._new_entry(image_id)
        cams = np.asarray(cams, dtype=np.float32)
        ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        if cams.ndim != 3 or cams.shape[0] != ids.size:
            raise ValueError(f"{where}: CAMs of shape {cams.shape} for {ids.size} class id(s); expected (K, H, W)")
        if np.unique(ids).size != ids.size or ((ids < 1) | (ids >= len(self.classes))).any():
            raise ValueError(f"{where}: class ids {ids.tolist()} must be distinct, in 1..{len(self.classes) - 1}")
        if cams.size and not (np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0):
            raise ValueError(f"{where}: CAM values must be finite and in [0, 1] (normalise before storing)")
        order = np.argsort(ids)
        data = cams[order].astype(np.float16)
        if ids.size:
            # One chunk per class map: a reader always wants whole maps.
            dset = self._file.create_dataset(
                image_id, data=data, chunks=(1, *data.shape[1:]), compression="gzip", compression_opts=1, shuffle=True
            )
        else:  # HDF5 cannot chunk an empty dataset; it takes no space anyway.
            dset = self._file.create_dataset(image_id, data=data)
        dset.attrs["class_ids"] = ids[order]


def _plain(value: Any) -> Any:
    """HDF5 attribute value as plain Python (lists, str, int, float) for JSON and comparisons."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class HDF5StoreReader:
    """Base of the store readers. Opens read-only without HDF5 file locking.

    Stores are immutable once renamed into place, so locking protects nothing; it
    only fails on file systems without lock support (NFS, Lustre on clusters).
    Open one reader per process (after any fork): h5py handles must not cross forks.
    Subclasses set what the messages call the store and its entries, and the error type.
    """

    FORMAT = FORMAT
    KIND = "CAM store"  # "<path>: not a CAM store"
    ENTRY = "CAMs"  # "<path>: no CAMs for image 'x'"
    Error: type[ValueError] = CAMStoreError

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: {self.KIND} not found")
        try:
            self._file = h5py.File(self.path, "r", locking=False)
        except OSError as err:
            raise self.Error(f"{self.path}: not a {self.KIND} (not an HDF5 file: {err})") from err
        if self._file.attrs.get("format") != self.FORMAT:
            self._file.close()
            raise self.Error(f"{self.path}: not a {self.KIND} (no format attribute '{self.FORMAT}')")
        self.attrs: dict[str, Any] = {k: _plain(v) for k, v in self._file.attrs.items()}

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ids(self) -> list[str]:
        """Stored image ids, sorted."""
        return sorted(self._file.keys())

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._file

    def __len__(self) -> int:
        return len(self._file)

    def _entry(self, image_id: str) -> h5py.Dataset:
        if image_id not in self._file:
            raise self.Error(f"{self.path}: no {self.ENTRY} for image '{image_id}' ({len(self)} images stored)")
        return self._file[image_id]

    def check_covers(self, ids: Sequence[str]) -> None:
        """Raise naming the file unless every one of ``ids`` is stored."""
        missing = [i for i in ids if i not in self]
        if missing:
            count = f"{len(missing)} image(s) of the split"
            raise self.Error(f"{self.path}: no {self.ENTRY} for {count}, e.g. {missing[:5]}")


class CAMReader(HDF5StoreReader):
    """Read a CAM store (see :class:`HDF5StoreReader`)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.classes: tuple[str, ...] = tuple(self.attrs["classes"])

    def read(self, image_id: str) -> tuple[np.ndarray, tuple[int, ...]]:
        """``(cams float32 (K, H, W), class_ids)`` with class ids ascending."""
        dset = self._entry(image_id)
        return dset[()].astype(np.float32), tuple(int(c) for c in dset.attrs["class_ids"])

    def dense(self, image_id: str, num_classes: int) -> np.ndarray:
        """float32 (num_classes - 1, H, W): row c - 1 holds class c's map, zeros for absent classes."""
        cams, class_ids = self.read(image_id)
        if class_ids and max(class_ids) >= num_classes:
            raise CAMStoreError(f"{self.path}: image '{image_id}' has class {max(class_ids)} >= {num_classes}")
        out = np.zeros((num_classes - 1, *cams.shape[1:]), np.float32)
        out[[c - 1 for c in class_ids]] = cams
        return out


def check_store_covers(reader: CAMReader, classes: Sequence[str], ids: Sequence[str]) -> None:
    """Raise CAMStoreError naming the file unless the store has ``classes`` and maps for every one of ``ids``."""
    if list(reader.classes) != list(classes):
        raise CAMStoreError(f"{reader.path}: CAMs of classes {list(reader.classes)}, dataset has {list(classes)}")
    reader.check_covers(ids)
