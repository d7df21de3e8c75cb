"""Choose the device once: the job's CUDA device when there is one, else the CPU."""

from __future__ import annotations

import torch


def select_device(requested: str = "auto") -> torch.device:
    """``auto``: first visible CUDA device (the job's own, via CUDA_VISIBLE_DEVICES) or CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{requested}' requested but CUDA is not available on this machine")
    return device
