"""Atomic writes: every stage writes to a temporary sibling, then renames; and file digests.

A killed job therefore leaves either the old file/tree or none at all, never a
half-written one that a later stage could mistake for a finished result.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image


def _tmp_sibling(final: Path, is_dir: bool) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=final.suffix, dir=final.parent)
    os.close(fd)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``final``'s folder; rename it onto ``final`` on success."""
    final = Path(final)
    tmp = _tmp_sibling(final, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; it replaces ``final`` only on success.

    An existing ``final`` is moved aside first and deleted after the swap, so a
    crash at any point leaves a complete tree (old or new) under ``final`` or nothing.
    """
    final = Path(final)
    tmp = _tmp_sibling(final, is_dir=True)
    try:
        yield tmp
        old = None
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def save_label_png(path: str | os.PathLike, labels: np.ndarray, palette: list[int]) -> None:
    """Write a 2-D uint8 label map as a palette PNG (pixel value = class id)."""
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"{path}: label map must be 2-D uint8, got {labels.shape} {labels.dtype}")
    labels = np.ascontiguousarray(labels)
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    img.putpalette(palette)
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (stores record the checkpoint they were made from)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
