"""Training checkpoints: written atomically every epoch, resumed after a kill.

A checkpoint carries the model, optimizer and scheduler state, every RNG state, the
finished epoch, and a fingerprint of the training configuration: a checkpoint left
by a run with other settings is never resumed (it is replaced by a fresh start). A checkpoint that
cannot be read (a disk that filled up, a copy cut short) is moved aside to ``<name>.corrupt`` and
training starts fresh, so a rerun does not fail on it again and again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from wsss_core.fileio import atomic_file

log = logging.getLogger(__name__)


def fingerprint(settings: dict) -> str:
    """Stable hash of the settings that define a training run."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def rng_state() -> dict:
    """Every RNG state, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: str | Path, *, model, optimizer, scheduler, epoch: int, settings_hash: str, history) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "settings_hash": settings_hash,
        "history": history,
        "rng": rng_state(),
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def resume(path: str | Path, settings_hash: str, *, model, optimizer, scheduler) -> tuple[list, int]:
    """Restore model, optimizer, scheduler and RNGs from ``path`` when it belongs to a run with these
    settings; returns (history so far, epochs done), ``([], 0)`` for a fresh start."""
    state = load_checkpoint(path, settings_hash)
    if state is None:
        return [], 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return list(state["history"]), state["epoch"]


def load_checkpoint(path: str | Path, settings_hash: str) -> dict | None:
    """The checkpoint at ``path`` if it belongs to a run with these settings, else None.

    An unreadable checkpoint is renamed to ``<name>.corrupt`` (replacing an older one), with a
    warning naming both files, and None is returned: the run starts fresh. A file that cannot be
    read at all (permissions, I/O errors) raises its OSError instead: its bytes may be fine.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict):
            raise TypeError(f"holds a {type(payload).__name__}, not a training checkpoint's dict")
    except Exception as err:  # zip reader RuntimeError or OSError, UnpicklingError, EOFError, ...
        if isinstance(err, OSError):
            _readable_or_raise(path)
        _move_aside(path, err)
        return None
    if payload.get("settings_hash") != settings_hash:
        return None
    return payload


def _readable_or_raise(path: Path) -> None:
    """Read every byte of ``path``: an OSError here (permissions, I/O) is raised, since it says
    nothing about the bytes, whereas torch's zip reader also raises OSError on bytes it cannot parse."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def _move_aside(path: Path, err: Exception) -> None:
    # the error's first sentence: torch's messages go on for a paragraph about weights_only and miniz
    first = str(err).strip().split("\n")[0].split(". ")[0].rstrip(".")
    first = first if len(first) <= 200 else first[:200] + "..."
    reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another process of a data-parallel job moved it first
        pass
    log.warning("checkpoint %s is unreadable (%s): moved aside to %s, training starts fresh", path, reason, aside)


def save_epoch(ctx, path: str | Path, **state) -> None:
    """End of an epoch: rank 0 writes the checkpoint (:func:`save_checkpoint` arguments); no rank of a
    data-parallel job (``ctx``, train/distributed.py) runs ahead of the checkpoint it could be resumed from."""
    if ctx.is_main:
        save_checkpoint(path, **state)
    ctx.barrier()


def save_final(ctx, out_model, model, meta: dict, out_history_csv, history: list[dict], checkpoint: Path) -> None:
    """End of training: rank 0 writes the model (weights in the plain layout whatever ``channels_last`` was, so
    it loads anywhere) and the history, then drops the checkpoint the finished model supersedes."""
    from wsss_core.train.loop import write_history_csv

    if ctx.is_main:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        with atomic_file(out_model) as tmp:
            torch.save({"state_dict": state, "meta": meta}, tmp)
        write_history_csv(out_history_csv, history)
        checkpoint.unlink(missing_ok=True)
    ctx.barrier()
