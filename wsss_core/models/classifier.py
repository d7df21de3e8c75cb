"""The image classifiers whose CAMs the pipeline uses, by method: ``cam`` (CAMNet) or ``coattention``."""

from __future__ import annotations

import os

import torch

from wsss_core.models.backbones import build_backbone
from wsss_core.models.cam_head import CAMNet
from wsss_core.models.coattention import TARGET, CoAttentionNet
from wsss_core.models.saved import load_saved

METHODS = ("cam", "coattention")
# what a saved classifier's meta["arch"] holds (co-attention classifiers add their image domains and head)
ARCH_KEYS = ("method", "backbone", "output_stride")


def build_classifier(arch: dict, num_classes: int, weights: str = "random", weights_dir=None, frozen_bn=True):
    """The network described by ``arch`` (see ARCH_KEYS) over ``num_classes`` foreground classes."""
    if arch["method"] not in METHODS:
        raise ValueError(f"config key classifier.method: unknown method '{arch['method']}' (one of {METHODS})")
    backbone = build_backbone(
        arch["backbone"],
        weights=weights,
        output_stride=arch["output_stride"],
        frozen_bn=frozen_bn,
        weights_dir=weights_dir,
    )
    if arch["method"] == "cam":
        return CAMNet(backbone, num_classes)
    return CoAttentionNet(
        backbone,
        num_classes,
        domains=tuple(arch.get("domains", (TARGET,))),
        head_convs=arch.get("head_convs", 0),
        head_channels=arch.get("head_channels", 512),
        affinity=arch.get("affinity", "bilinear"),
        temperature=arch.get("temperature", 0.1),
    )


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """(model in eval mode, metadata) from a file written by rule train_classifier."""
    return load_saved(path, lambda meta: build_classifier(meta["arch"], len(meta["classes"]) - 1), device)
