"""AffinityNet (Ahn & Kwak, CVPR 2018): a per-cell embedding whose L1 distances give pixel affinities.

PSA reads three depths of ResNet-38 (conv4/5/6, 512/1024/4096 channels, all at stride 8 by
dilation), maps them by 1x1 convs + ELU to 64/128/256 channels, concatenates them (448) and
mixes them by one more 1x1 conv + ELU. Shallow levels see edges and colour, deep ones
semantics; an affinity needs both to stop at object boundaries and still join the parts
of one object. Same head here, on the three corresponding depths of our backbones:

* ResNet-50/101: ``layer2`` (stride 8), ``layer3`` (16), ``layer4`` (32), dilated as the backbone is.
* EfficientNet-Lite0: the ends of its 40-channel stage (stride 8) and 112-channel stage
  (stride 16), and the 1280-channel head output (stride 32), dilated as the backbone is.

The levels are tapped with forward hooks (:meth:`~wsss_core.models.backbones.Backbone.
forward_with_taps`, as for the DeepLab v3+ decoder) and resized bilinearly to the backbone's output grid
(``backbone.stride``: build with ``output_stride=8`` for PSA's stride-8 grid). The
affinities themselves are computed in :mod:`wsss_core.refine.random_walk`.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from wsss_core.models.backbones import Backbone, EfficientNetLite0Backbone, ResNetBackbone, build_backbone
from wsss_core.models.saved import load_saved

# Settings that define the architecture; stored with the weights so inference can rebuild it.
AFF_ARCH_KEYS = ("backbone", "output_stride")
LEVEL_CHANNELS = (64, 128, 256)  # PSA's f8_3, f8_4, f8_5
EMBED_CHANNELS = sum(LEVEL_CHANNELS)  # PSA's f9: 448
F9_GAIN = 4.0  # PSA initialises the mixing conv with xavier_uniform(gain=4): initial affinities well below 1
LITE0_TAP_STAGES = (2, 4)  # 0-based stages of EfficientNet-B0's layout (16, 24, 40, 80, 112, 192, 320 ch)


def level_taps(backbone: Backbone) -> list[tuple[str, int]]:
    """(module name in ``backbone``, channels) of the two shallower levels; the third is the output."""
    if isinstance(backbone, ResNetBackbone):
        return [(name, getattr(backbone, name)[-1].conv3.out_channels) for name in ("layer2", "layer3")]
    if isinstance(backbone, EfficientNetLite0Backbone):
        # A stage ends where the next block changes the channel count.
        blocks = list(backbone._blocks)
        channels = [b._project_conv.out_channels for b in blocks]
        ends = [i for i in range(len(blocks)) if i + 1 == len(blocks) or channels[i + 1] != channels[i]]
        if len(ends) != 7:
            raise ValueError(f"efficientnet_lite0: expected 7 stages, found {len(ends)}; cannot place AffinityNet taps")
        picked = [ends[s] for s in LITE0_TAP_STAGES]
        return [(f"_blocks.{i}", blocks[i]._project_conv.out_channels) for i in picked]
    raise ValueError(
        f"AffinityNet: no feature levels known for backbone {type(backbone).__name__} "
        f"(use resnet50, resnet101 or efficientnet_lite0)"
    )


class AffinityNet(nn.Module):
    """``forward(x)`` -> (B, 448, ceil(H / stride), ceil(W / stride)) embedding of a normalised image batch."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        taps = level_taps(backbone)
        self.taps = [name for name, _ in taps]
        in_channels = [c for _, c in taps] + [backbone.out_channels]
        self.levels = nn.ModuleList(nn.Conv2d(c, o, 1, bias=False) for c, o in zip(in_channels, LEVEL_CHANNELS))
        self.mix = nn.Conv2d(EMBED_CHANNELS, EMBED_CHANNELS, 1, bias=False)
        for conv in self.levels:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.mix.weight, gain=F9_GAIN)

    def feature_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tapped levels, shallow to deep, then the backbone output; each at its own resolution."""
        out, tapped = self.backbone.forward_with_taps(x, self.taps)
        return [*tapped, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.feature_levels(x)
        size = levels[-1].shape[-2:]
        parts = [F.elu(conv(level)) for conv, level in zip(self.levels, levels)]
        parts = [
            p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            for p in parts
        ]
        return F.elu(self.mix(torch.cat(parts, dim=1)))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained backbone params, new params: the embedding head) among the trainable ones."""
        return self.backbone.param_groups(self.levels, self.mix)


def build_affinitynet(
    arch: dict,
    *,
    weights: str | os.PathLike = "random",
    weights_dir: str | os.PathLike | None = None,
    frozen_bn: bool = True,
) -> AffinityNet:
    """The AffinityNet described by ``arch`` (keys AFF_ARCH_KEYS); ``weights`` etc. are the backbone's
    (see :func:`wsss_core.models.backbones.build_backbone`). The embedding head always starts fresh."""
    missing = [k for k in AFF_ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f"AffinityNet architecture lacks key(s) {missing}")
    backbone = build_backbone(
        arch["backbone"],
        weights=weights,
        output_stride=arch["output_stride"],
        frozen_bn=frozen_bn,
        weights_dir=weights_dir,
    )
    return AffinityNet(backbone)


def load_affinitynet(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[AffinityNet, dict]:
    """(model in eval mode, metadata) from a file written by rule train_affinity."""
    return load_saved(path, lambda meta: build_affinitynet(meta["arch"], weights="random"), device)
