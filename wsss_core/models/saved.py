"""Reading back a trained network: every trainer saves ``{"state_dict": ..., "meta": ...}`` (train/checkpoint.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn


def load_saved(
    path: str | os.PathLike, build: Callable[[dict], nn.Module], device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict]:
    """(model in eval mode on ``device``, metadata): ``build(meta)`` makes the empty network, the file fills it."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    model = build(meta)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), meta
