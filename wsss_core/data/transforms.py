"""Training-time augmentation for the classifier: random resize-long, flip, colour jitter, crop.

All randomness comes from ``torch``'s generator, which DataLoader seeds per worker
from its own generator, so a seeded loader gives the same augmentations on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import ColorJitter


@dataclass(frozen=True)
class Augment:
    """Random resize (long side in ``resize_long``), flip, colour jitter, normalise, random crop."""

    crop_size: int
    resize_long: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True
    color_jitter: float = 0.3

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        h, w = x.shape[1:]
        long_side = int(torch.randint(self.resize_long[0], self.resize_long[1] + 1, ()).item())
        scale = long_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.color_jitter > 0:
            j = self.color_jitter
            x = ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 3))(x.clamp(0, 1))
        x = normalize(x, self.mean, self.std)
        return random_crop(x, self.crop_size)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) image in 0..1 -> network input."""
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def random_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Crop (or zero-pad, i.e. pad with the mean colour after normalisation) to size x size."""
    c, h, w = x.shape
    out = x.new_zeros((c, size, size))
    top = int(torch.randint(0, max(h - size, 0) + 1, ()).item())
    left = int(torch.randint(0, max(w - size, 0) + 1, ()).item())
    ph, pw = min(h, size), min(w, size)
    # where the image is smaller than the crop, place it at a random offset in the canvas
    off_y = int(torch.randint(0, size - ph + 1, ()).item())
    off_x = int(torch.randint(0, size - pw + 1, ()).item())
    out[:, off_y : off_y + ph, off_x : off_x + pw] = x[:, top : top + ph, left : left + pw]
    return out
