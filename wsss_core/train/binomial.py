"""Binomial importance sampling and the feature-similarity loss (the "binomial posteriors" add-on).

After Jonnarth & Felsberg, *Importance sampling CAMs for weakly-supervised segmentation* (ICASSP 2022),
with every class read as an independent binary posterior sigmoid(logit) rather than a softmax over
classes (an image can hold several classes; a pixel can be evidence for more than one):

* importance sampling: GAP averages a class map over all pixels, so the classifier is rewarded for a
  few very high logits. Instead, per image and labelled class, draw K pixels with probability
  proportional to sigmoid(logit) and average their logits; the multilabel soft-margin loss on these
  sampled scores (unlabelled classes keep their GAP score) is added to the GAP loss with a small
  weight. Pixels the network already believes in are drawn often, so their logits are pushed up
  together and the map saturates over the object instead of peaking on one part;
* feature similarity: for pixel pairs (i, j) within a Gaussian window (sigma in feature pixels),
  w_rgb = tanh(mu + logit(d_ij)) with d_ij the mean absolute RGB difference in [0, 1]: negative for
  pairs of similar colour, positive once d_ij > sigmoid(-mu) (0.076 at mu = 2.5). The loss
  sum g_ij * (-w_rgb) * ||p_i - p_j||^2 / sum g_ij pulls the class maps p of similar-coloured neighbours
  together and pushes them apart across colour edges, so CAM contours follow image edges. p holds
  sigmoid(logit) of the labelled classes (each normalised on its own) and background = 1 - max of them.
  The squared distance matters: its gradient vanishes for equal maps, so a colour edge inside a
  uniformly scored region only sharpens differences the classifier already made, whereas |p_i - p_j|
  tears every textured region apart at full strength (on photos most of a window's pairs lie above the
  colour threshold; docs/results.md). Distances follow the reference code (L1 colours over 3 channels,
  squared L2 maps, weight 0.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-4  # keeps logit(d) finite for identical colours and for black vs white


def importance_sampled_logits(
    cams: torch.Tensor, labels: torch.Tensor, samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, K) scores: labelled classes the mean logit of ``samples`` pixels drawn (with replacement) with
    probability proportional to sigmoid(logit); other classes their GAP. Gradients flow through the drawn
    pixels' logits, not through the draw."""
    b, k = cams.shape[:2]
    flat = cams.flatten(2)  # (B, K, P)
    weights = torch.sigmoid(flat.detach().float()).reshape(b * k, -1)
    index = torch.multinomial(weights, samples, replacement=True, generator=generator)
    sampled = flat.reshape(b * k, -1).gather(1, index).mean(dim=1).reshape(b, k)
    return torch.where(labels > 0, sampled, flat.mean(dim=2))


def class_probabilities(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, 1 + K, h, w) maps: background, then each class's sigmoid, zero for unlabelled classes (so an
    unlabelled map adds nothing to a pair's squared distance)."""
    fg = torch.sigmoid(cams) * labels.to(cams.dtype)[:, :, None, None]
    return torch.cat([1 - fg.amax(dim=1, keepdim=True), fg], dim=1)


def colour_weight(distance: torch.Tensor, mu: float) -> torch.Tensor:
    """tanh(mu + logit(d)) for colour distances d in [0, 1]: -1 for equal colours, towards +1 for distant."""
    return torch.tanh(mu + torch.logit(distance.clamp(EPS, 1 - EPS)))


def window_offsets(sigma: float) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of one half of the disc of radius ceil(2 sigma): each unordered pair once."""
    r = math.ceil(2 * sigma)
    return [
        (dy, dx)
        for dy in range(0, r + 1)
        for dx in range(-r, r + 1)
        if (dy > 0 or dx > 0) and dy * dy + dx * dx <= r * r
    ]


def _shifted(x: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at p, x at p + (dy, dx)) over all positions p where both lie inside the map (dy >= 0)."""
    h, w = x.shape[-2:]
    a = x[..., : h - dy, max(0, -dx) : w - max(0, dx)]
    b = x[..., dy:, max(0, dx) : w - max(0, -dx)]
    return a, b


def feature_similarity_loss(
    cams: torch.Tensor, rgb: torch.Tensor, labels: torch.Tensor, sigma: float, mu: float
) -> torch.Tensor:
    """The feature-similarity loss of (B, K, h, w) class logits given the (B, 3, H, W) images in [0, 1]
    (averaged down to the maps' size) and (B, K) multi-hot labels; see the module docstring."""
    h, w = cams.shape[-2:]
    colours = F.adaptive_avg_pool2d(rgb.to(cams.dtype), (h, w))
    probs = class_probabilities(cams, labels)
    total, norm = cams.new_zeros(()), 0.0
    for dy, dx in window_offsets(sigma):
        if dy >= h or abs(dx) >= w:
            continue
        p_a, p_b = _shifted(probs, dy, dx)
        c_a, c_b = _shifted(colours, dy, dx)
        change = (p_a - p_b).square().sum(dim=1)  # (B, h', w'); unlabelled maps are 0 on both sides
        distance = (c_a - c_b).abs().mean(dim=1)
        g = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
        total = total + g * (-colour_weight(distance, mu) * change).sum()
        norm += g * change.numel()
    return total / max(norm, 1e-12)


class BinomialTerms:
    """Importance-sampling and feature-similarity terms of a batch (config ``classifier.binomial``)."""

    def __init__(self, cfg: dict, mean, std):
        self.samples, self.sampling_weight = cfg["samples"], cfg["sampling_weight"]
        self.sigma, self.mu, self.similarity_weight = cfg["sigma"], cfg["mu"], cfg["similarity_weight"]
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, model, images, labels, cams, progress: float) -> dict:
        rgb = images * self.std.to(images) + self.mean.to(images)  # undo the backbone's normalisation
        scores = importance_sampled_logits(cams, labels, self.samples)
        return {
            "sampling": self.sampling_weight * F.multilabel_soft_margin_loss(scores, labels),
            "similarity": self.similarity_weight * feature_similarity_loss(cams, rgb, labels, self.sigma, self.mu),
        }
