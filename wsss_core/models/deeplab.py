"""DeepLab segmentation networks on the dense backbones: the last stage of a WSSS pipeline.

Once pseudo labels exist, the standard final step trains a fully supervised segmenter on
them; its smoothing over many images usually beats the labels it learned from. Three heads
(config key ``segmentation.model``), all ending in per-pixel logits over the classes
including background, bilinearly upsampled to the input size:

* ``deeplab_largefov`` (Chen et al., ICLR 2015): a 1x1 classifier. On ``vgg16_largefov``,
  whose fc6 (3x3, dilation 12) / fc7 with dropout already sit in the backbone, this is
  DeepLab-LargeFOV itself; on other backbones it is the plain FCN-style 1x1 head.
* ``deeplab_v2`` (Chen et al., TPAMI 2017): ASPP-v2, four parallel 3x3 convs with dilations
  6, 12, 18, 24 straight to class logits, summed. The rates are the paper's, fixed: they
  were chosen for its stride-8 features and are used as they are at every output stride.
* ``deeplab_v3plus`` (Chen et al., ECCV 2018): torchvision's ASPP (rates 6, 12, 18 at
  stride 16, scaled by 16 / stride otherwise, ``aspp_channels`` wide, with image pooling)
  and the v3+ decoder, which sharpens boundaries with stride-4 backbone features. With a
  small ``aspp_channels`` (64-128) on EfficientNet-Lite0 it is the light head for CPU runs.

The stride-4 features are tapped with a forward hook on the backbone's stride-4 module,
so the backbones (shared with the trained CAM stages) stay untouched. Backbone BatchNorm
follows ``frozen_bn`` (ImageNet statistics kept); the head's BatchNorm layers are new, have
no statistics worth keeping, and always train. The v3+ image-pooling branch therefore
needs at least 2 images per training batch.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from wsss_core.models.backbones import (
    Backbone,
    EfficientNetLite0Backbone,
    ResNetBackbone,
    VGG16LargeFOV,
    WeightsUnavailableError,
    build_backbone,
)
from wsss_core.models.saved import load_saved

# Settings that define the architecture; stored with the weights so inference can rebuild it.
SEG_ARCH_KEYS = ("model", "backbone", "output_stride", "aspp_channels")
MODELS = ("deeplab_largefov", "deeplab_v2", "deeplab_v3plus")
V2_RATES = (6, 12, 18, 24)
V3_RATES_OS16 = (6, 12, 18)
DECODER_LOW_CHANNELS = 48  # the v3+ paper's reduction of the low-level features


def _init_conv(conv: nn.Conv2d, classifier: bool = False) -> None:
    """He init for hidden convs (ReLU follows); N(0, 0.01) for class logits, as DeepLab initialises them."""
    if classifier:
        nn.init.normal_(conv.weight, std=0.01)
    else:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _init_new(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            _init_conv(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class LargeFOVHead(nn.Module):
    """1x1 conv from the backbone features to the class logits."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        _init_conv(self.classifier, classifier=True)

    def forward(self, x: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(x)


class ASPPv2Head(nn.Module):
    """Sum of parallel dilated 3x3 convs, each straight to class logits."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = V2_RATES):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            _init_conv(conv, classifier=True)

    def forward(self, x: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def separable_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 depthwise + 1x1 pointwise conv, each with BN + ReLU: the v3+ paper's decoder conv.

    At stride 4 the decoder is the most expensive part of the head; two dense 3x3 convs there
    cost about as much as the whole EfficientNet-Lite0 backbone, the separable ones a tenth.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepLabV3PlusHead(nn.Module):
    """torchvision ASPP + decoder: ASPP upsampled to the stride-4 map, fused with its 48-ch projection
    by two depthwise-separable 3x3 convs (as in the v3+ paper)."""

    def __init__(self, in_channels: int, low_channels: int, num_classes: int, rates: tuple[int, ...], channels: int):
        super().__init__()
        self.aspp = ASPP(in_channels, rates, channels)
        self.reduce = nn.Sequential(
            nn.Conv2d(low_channels, DECODER_LOW_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(DECODER_LOW_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            separable_conv(channels + DECODER_LOW_CHANNELS, channels), separable_conv(channels, channels)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        _init_new(self)
        _init_conv(self.classifier, classifier=True)

    def forward(self, x: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        if low is None:
            raise ValueError("deeplab_v3plus head needs the stride-4 backbone features")
        x = F.interpolate(self.aspp(x), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, self.reduce(low)], dim=1)))


def low_level_tap(backbone: Backbone) -> tuple[str, int]:
    """(name in ``backbone`` of the module whose output is the stride-4 feature map, its channels).

    ResNet: ``layer1``. VGG16-LargeFOV: the 2nd max-pool of ``features``. EfficientNet-Lite0:
    the last block at cumulative stride 4, found by walking the strides (the stem's, then each
    block's depthwise conv), so a package that regroups its blocks still gets the right one.
    """
    if isinstance(backbone, ResNetBackbone):
        module, channels = backbone.layer1, backbone.layer1[-1].conv3.out_channels
    elif isinstance(backbone, VGG16LargeFOV):
        pools = [i for i, m in enumerate(backbone.features) if isinstance(m, nn.MaxPool2d)]
        convs = [m for m in backbone.features[: pools[1]] if isinstance(m, nn.Conv2d)]
        module, channels = backbone.features[pools[1]], convs[-1].out_channels
    elif isinstance(backbone, EfficientNetLite0Backbone):
        stride, module = backbone._conv_stem.stride[0], None
        for block in backbone._blocks:
            stride *= block._depthwise_conv.stride[0]
            if stride == 4:
                module = block
            elif stride > 4:
                break
        if module is None:
            raise ValueError("efficientnet_lite0: no block at cumulative stride 4")
        channels = module._project_conv.out_channels
    else:
        raise ValueError(f"deeplab_v3plus: no stride-4 tap known for backbone {type(backbone).__name__}")
    return next(name for name, m in backbone.named_modules() if m is module), channels


class Segmenter(nn.Module):
    """Backbone + DeepLab head: ``forward(x)`` gives (B, num_classes, H, W) logits at the input size."""

    def __init__(self, backbone: Backbone, head: nn.Module, tap: str | None = None):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.tap = tap  # name in ``backbone`` of the stride-4 module the head reads (v3+), else None

    @property
    def mean(self) -> tuple[float, ...]:
        return self.backbone.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.backbone.std

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(backbone features at ``stride``, stride-4 features or None when the head needs none)."""
        if self.tap is None:
            return self.backbone(x), None
        high, (low,) = self.backbone.forward_with_taps(x, [self.tap])
        return high, low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(*self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained backbone params, new params) among the trainable ones.

        New = the head plus the backbone's ``new_layers`` (VGG's fc6/fc7), trained at a larger
        learning rate. Frozen parameters (frozen BatchNorm) are in neither group.
        """
        return self.backbone.param_groups(self.head)


def build_segmenter(
    arch: dict,
    num_classes: int,
    *,
    weights: str | os.PathLike = "random",
    weights_dir: str | os.PathLike | None = None,
    frozen_bn: bool = True,
) -> Segmenter:
    """The network described by ``arch`` (keys SEG_ARCH_KEYS) over ``num_classes`` classes incl. background.

    ``weights`` / ``weights_dir`` / ``frozen_bn`` are the backbone's (see ``build_backbone``):
    "imagenet", "random" or a backbone state dict file. The head always starts fresh.
    """
    missing = [k for k in SEG_ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f"segmentation architecture lacks config key(s) {['segmentation.' + k for k in missing]}")
    model = arch["model"]
    if model not in MODELS:
        raise ValueError(f"config key segmentation.model: unknown model {model!r}, use one of {', '.join(MODELS)}")
    if weights not in ("imagenet", "random") and not os.path.isfile(weights):
        raise FileNotFoundError(f"config key segmentation.weights: {weights} is not a file (or use imagenet, random)")
    try:
        backbone = build_backbone(
            arch["backbone"],
            weights=weights,
            output_stride=arch["output_stride"],
            frozen_bn=frozen_bn,
            weights_dir=weights_dir,
        )
    except WeightsUnavailableError as err:
        # build_backbone's advice names the classifier's config keys; here the segmentation's apply
        raise WeightsUnavailableError(str(err).replace("classifier.weights", "segmentation.weights")) from err
    if model == "deeplab_largefov":
        return Segmenter(backbone, LargeFOVHead(backbone.out_channels, num_classes))
    if model == "deeplab_v2":
        return Segmenter(backbone, ASPPv2Head(backbone.out_channels, num_classes))
    channels = int(arch["aspp_channels"])
    if channels < 1:
        raise ValueError(f"config key segmentation.aspp_channels must be positive, got {arch['aspp_channels']}")
    rates = tuple(math.ceil(r * 16 / backbone.stride) for r in V3_RATES_OS16)
    tap, low_channels = low_level_tap(backbone)
    head = DeepLabV3PlusHead(backbone.out_channels, low_channels, num_classes, rates, channels)
    return Segmenter(backbone, head, tap)


def load_segmenter(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[Segmenter, dict]:
    """(model in eval mode, metadata) from a file written by rule train_segmentation."""
    return load_saved(path, lambda meta: build_segmenter(meta["arch"], len(meta["classes"]), weights="random"), device)
