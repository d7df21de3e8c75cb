"""The CAM baseline classifier: a dense backbone and one 1x1 conv over the foreground classes.

Class activation maps (Zhou et al., CVPR 2016) are the classifier's weights applied at
every position of the feature map; training only sees their global average. Because
the 1x1 conv is linear and has no bias, ``GAP(classifier(F)) == classifier(GAP(F))``,
so the logits are computed on the pooled features (cheaper) and ``cams`` returns the
maps whose averages are exactly those logits. The co-attention classifier reuses
``backbone`` and ``classifier``, so this class holds nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from wsss_core.models.backbones import Backbone


class CAMNet(nn.Module):
    """``backbone`` + ``classifier = Conv2d(C, num_classes, 1, bias=False)``; no background class."""

    def __init__(self, backbone: Backbone, num_classes: int, channels: int | None = None):
        super().__init__()
        self.backbone = backbone
        # channels of what :meth:`features` returns (subclasses may put layers after the backbone)
        self.classifier = nn.Conv2d(channels or backbone.out_channels, num_classes, 1, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) backbone features at ``backbone.stride`` of a normalised image batch."""
        return self.backbone(x)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) raw class activation maps (before any ReLU or normalisation)."""
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) multi-label logits: the global average of :meth:`cams`."""
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained backbone params, new params) among the trainable ones.

        New = the classifier plus the backbone's ``new_layers`` (e.g. VGG's fc6/fc7),
        which the trainer gives a larger (typically 10x) learning rate. Frozen
        parameters (e.g. frozen BatchNorm) are in neither group.
        """
        return self.backbone.param_groups(self.classifier)
