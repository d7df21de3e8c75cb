"""Puzzle-CAM (Jo & Yu, ICIP 2021): CAMs of an image's tiles, merged, should match the image's CAMs.

The classifier sees the whole image and, separately, its n x n tiles; the tiles' class maps are put
back in place (:func:`merge`) and trained like the full image's (multilabel soft-margin loss of their
GAP) and towards the full image's maps (L1 over the image's labelled classes). A tile's classifier
cannot see the context that made one part of an object discriminative, so it must find the evidence
in every part: the merged maps cover more of each object, and the reconstruction term pulls the
full-image CAMs towards them. The reconstruction weight alpha ramps linearly from 0 to its maximum
over the first ``ramp`` fraction of training (the reference code's schedule), while early CAMs are noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tile(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (n*n*B, C, H/n, W/n): tile (i, j) of every image is row (i*n + j)*B + b."""
    b, c, h, w = x.shape
    if h % n or w % n:
        raise ValueError(f"cannot cut a {h}x{w} batch into {n}x{n} equal tiles")
    th, tw = h // n, w // n
    return x.reshape(b, c, n, th, n, tw).permute(2, 4, 0, 1, 3, 5).reshape(n * n * b, c, th, tw)


def merge(tiles: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of :func:`tile`: (n*n*B, C, h, w) -> (B, C, n*h, n*w)."""
    nb, c, th, tw = tiles.shape
    if nb % (n * n):
        raise ValueError(f"{nb} tiles are not a multiple of {n}x{n}")
    b = nb // (n * n)
    return tiles.reshape(n, n, b, c, th, tw).permute(2, 3, 0, 4, 1, 5).reshape(b, c, n * th, n * tw)


def alpha_at(progress: float, alpha_max: float, ramp: float) -> float:
    """Reconstruction weight after ``progress`` (0..1) of training: linear from 0 to ``alpha_max`` at ``ramp``."""
    if ramp <= 0:
        return float(alpha_max)
    return float(alpha_max) * min(1.0, max(0.0, progress) / ramp)


def reconstruction_loss(cams: torch.Tensor, merged: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean |cams - merged| over all positions, counting only each image's labelled classes (others are 0).

    The mean runs over every (image, class, position), as in the reference code, so an image with more
    labels weighs more.
    """
    mask = labels.to(cams.dtype)[:, :, None, None]
    return ((cams - merged).abs() * mask).mean()


class PuzzleTerms:
    """The Puzzle-CAM loss terms of a batch, for the classifier objectives (``classifier.puzzle``)."""

    def __init__(self, cfg: dict, stride: int, crop_size: int):
        self.n, self.alpha_max, self.ramp = cfg["tiles"], cfg["alpha"], cfg["ramp"]
        if crop_size % (self.n * stride):
            raise ValueError(
                f"config key classifier.crop_size: {crop_size} must be a multiple of "
                f"classifier.puzzle.tiles x the backbone stride ({self.n} x {stride}) so that "
                "the tiles' feature maps fit together"
            )

    def __call__(self, model, images, labels, cams, progress: float) -> dict:
        merged = merge(model.cams(tile(images, self.n)), self.n)
        if merged.shape != cams.shape:  # an input size that is not a multiple of n x stride
            raise ValueError(f"merged tile CAMs {tuple(merged.shape)} do not match the image's {tuple(cams.shape)}")
        alpha = alpha_at(progress, self.alpha_max, self.ramp)
        return {
            "puzzle_cls": F.multilabel_soft_margin_loss(merged.mean(dim=(2, 3)), labels),
            "puzzle_reconstruction": alpha * reconstruction_loss(cams, merged, labels),
        }
