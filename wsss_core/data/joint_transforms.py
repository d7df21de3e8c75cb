"""Training-time augmentation for segmentation: one random geometry applied to an image and its label map.

Random scale (a factor drawn from ``scale_range``), horizontal flip, optional colour
jitter (image only), normalisation, then a random ``crop_size`` square crop. Where the
scaled image is smaller than the crop it is padded: the image with 0 after normalisation
(the mean colour, what the network sees as "nothing"), the label with 255, so padding
never counts as background. Labels are resized with nearest neighbour in PIL's convention
("nearest-exact": the source pixel whose centre is nearest), which is also the pixel-centre
convention of the bilinear image resize, so the two stay aligned at every scale.

All randomness comes from ``torch``'s generator, which DataLoader seeds per worker from
its own generator (as :mod:`wsss_core.data.transforms`), so a seeded loader repeats itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import ColorJitter

from wsss_core.data.transforms import normalize
from wsss_core.data.voc_layout import IGNORE_INDEX


@dataclass(frozen=True)
class JointAugment:
    """``(image HxWx3 uint8, label HxW uint8) -> (float32 3xSxS normalised image, int64 SxS label)``."""

    crop_size: int
    scale_range: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True
    color_jitter: float = 0.0

    def __post_init__(self):
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be [min, max] with 0 < min <= max, got {list(self.scale_range)}")
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
        # np.require copies only read-only (e.g. np.asarray of a PIL image) or strided inputs
        x = torch.from_numpy(np.require(image, requirements="CW")).permute(2, 0, 1).float().div_(255)
        y = torch.from_numpy(np.require(label, requirements="CW")).long()
        lo, hi = self.scale_range
        factor = lo + (hi - lo) * float(torch.rand(()))
        h, w = y.shape
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        if size != (h, w):
            # antialias: a downscaled image averages what it drops instead of aliasing it
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            y = F.interpolate(y[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        if self.flip and torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if self.color_jitter > 0:
            j = self.color_jitter
            x = ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 3))(x.clamp(0, 1))
        x = normalize(x, self.mean, self.std)
        return joint_random_crop(x, y, self.crop_size)


def joint_random_crop(x: torch.Tensor, y: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``size`` x ``size`` window of image ``x`` (C, H, W) and label ``y`` (H, W).

    Along a side longer than ``size`` the window starts at a random offset; along a shorter
    side the whole side is placed at a random offset on a canvas padded with 0 (image) and
    255 (label), as :func:`wsss_core.data.transforms.random_crop` does for the image alone.
    """
    c, h, w = x.shape
    out_x = x.new_zeros((c, size, size))
    out_y = y.new_full((size, size), IGNORE_INDEX)
    top = int(torch.randint(0, max(h - size, 0) + 1, ()).item())
    left = int(torch.randint(0, max(w - size, 0) + 1, ()).item())
    ph, pw = min(h, size), min(w, size)
    off_y = int(torch.randint(0, size - ph + 1, ()).item())
    off_x = int(torch.randint(0, size - pw + 1, ()).item())
    out_x[:, off_y : off_y + ph, off_x : off_x + pw] = x[:, top : top + ph, left : left + pw]
    out_y[off_y : off_y + ph, off_x : off_x + pw] = y[top : top + ph, left : left + pw]
    return out_x, out_y
