"""DeepLab heads: output size, gradients, parameter groups, the v3+ stride-4 tap, ASPP rates, frozen BatchNorm."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from wsss_core.models.deeplab import MODELS, SEG_ARCH_KEYS, build_segmenter

H, W = 65, 49  # odd, non-square: catches floor-vs-ceil sizes and transposed maps
CLASSES = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny inputs gain nothing from intra-op threads on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def arch(model: str, backbone: str = "efficientnet_lite0", output_stride: int = 16, aspp_channels: int = 32) -> dict:
    return dict(model=model, backbone=backbone, output_stride=output_stride, aspp_channels=aspp_channels)


def test_arch_keys_are_what_build_reads():
    assert set(arch("deeplab_v2")) == set(SEG_ARCH_KEYS)


@pytest.mark.parametrize("backbone,stride", [("efficientnet_lite0", 16), ("resnet50", 16)])
@pytest.mark.parametrize("model", MODELS)
def test_logits_at_input_size_gradients_and_param_groups(model, backbone, stride):
    net = build_segmenter(arch(model, backbone, stride), CLASSES).train()
    x = torch.randn(2, 3, H, W)
    logits = net(x)
    assert logits.shape == (2, CLASSES, H, W)
    labels = torch.randint(0, CLASSES, (2, H, W))
    F.cross_entropy(logits, labels).backward()

    pretrained, new = net.param_groups()
    trainable = [p for p in net.parameters() if p.requires_grad]
    ids = [id(p) for p in pretrained + new]
    assert len(ids) == len(set(ids)) == len(trainable) and set(ids) == {id(p) for p in trainable}
    assert {id(p) for p in net.head.parameters()} <= {id(p) for p in new}  # the head trains at the new-layer rate
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.head.parameters() if p.ndim == 4)
    stem = next(p for p in net.backbone.parameters() if p.ndim == 4)  # the first conv
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_largefov_on_vgg_is_fc6_fc7_then_a_1x1_classifier():
    net = build_segmenter(arch("deeplab_largefov", "vgg16_largefov", 8), CLASSES).train()
    conv = net.head.classifier
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (1024, CLASSES, (1, 1))
    assert abs(conv.weight.std().item() - 0.01) < 0.002 and not conv.bias.any()  # DeepLab's classifier init
    pretrained, new = net.param_groups()
    new_ids = {id(p) for p in new}
    # fc6/fc7 come from no ImageNet checkpoint: they train at the new-layer rate with the head
    assert all(id(p) in new_ids for p in [*net.backbone.fc6.parameters(), *net.backbone.fc7.parameters()])
    assert all(id(p) not in new_ids for p in net.backbone.features.parameters())
    assert net(torch.randn(1, 3, H, W)).shape == (1, CLASSES, H, W)


TAPS = [
    ("resnet50", 16, 256),
    ("resnet50", 8, 256),
    ("efficientnet_lite0", 16, 24),
    ("efficientnet_lite0", 8, 24),
    ("vgg16_largefov", 8, 128),
]


@pytest.mark.parametrize("backbone,stride,channels", TAPS)
def test_v3plus_taps_stride4_features(backbone, stride, channels):
    net = build_segmenter(arch("deeplab_v3plus", backbone, stride), CLASSES).eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        high, low = net.features(x)
        logits = net(x)
    assert low.shape == (1, channels, math.ceil(H / 4), math.ceil(W / 4))
    assert high.shape[-2:] == (math.ceil(H / stride), math.ceil(W / stride))
    assert net.head.reduce[0].in_channels == channels and logits.shape == (1, CLASSES, H, W)
    assert not net.backbone.get_submodule(net.tap)._forward_hooks  # the per-call hook is removed again


def test_v3plus_decoder_uses_the_low_level_features():
    net = build_segmenter(arch("deeplab_v3plus", "resnet50"), CLASSES).eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        high, low = net.features(x)
        out = net.head(high, low)
        assert out.shape[-2:] == low.shape[-2:]  # logits at stride 4, before the final upsampling
        assert not torch.allclose(out, net.head(high, low + 1.0))


def test_a_copy_taps_its_own_backbone():
    net = build_segmenter(arch("deeplab_v3plus"), CLASSES).eval()
    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin.backbone._conv_stem.weight.mul_(-1)
        x = torch.randn(1, 3, H, W)
        assert not torch.allclose(net.features(x)[1], twin.features(x)[1])


def test_aspp_rates_double_at_output_stride_8():
    rates = {}
    for stride in (16, 8):
        net = build_segmenter(arch("deeplab_v3plus", output_stride=stride), CLASSES)
        rates[stride] = [net.head.aspp.convs[i][0].dilation[0] for i in (1, 2, 3)]
    assert rates == {16: [6, 12, 18], 8: [12, 24, 36]}
    v2 = build_segmenter(arch("deeplab_v2"), CLASSES)
    assert [b.dilation[0] for b in v2.head.branches] == [6, 12, 18, 24]
    assert all(b.padding == b.dilation for b in v2.head.branches)  # each branch keeps the map size


def test_frozen_bn_stays_frozen_and_head_bn_trains():
    net = build_segmenter(arch("deeplab_v3plus", "resnet50"), CLASSES, frozen_bn=True).train()
    backbone_bns = [m for m in net.backbone.modules() if isinstance(m, _BatchNorm)]
    head_bns = [m for m in net.head.modules() if isinstance(m, _BatchNorm)]
    assert backbone_bns and head_bns
    before = [m.running_mean.clone() for m in backbone_bns + head_bns]
    net(torch.randn(2, 3, H, W))
    assert all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in backbone_bns)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, backbone_bns))
    # head BN has no pretrained statistics to keep: it learns them
    assert all(m.training for m in head_bns)
    assert any(not torch.equal(b, m.running_mean) for b, m in zip(before[len(backbone_bns) :], head_bns))

    free = build_segmenter(arch("deeplab_v3plus", "resnet50"), CLASSES, frozen_bn=False).train()
    assert all(m.training for m in free.backbone.modules() if isinstance(m, _BatchNorm))
    assert len(free.param_groups()[0]) > len(net.param_groups()[0])


def test_bad_arch_names_the_config_key(tmp_path):
    with pytest.raises(ValueError, match="segmentation.model"):
        build_segmenter(arch("deeplab_v4"), CLASSES)
    with pytest.raises(ValueError, match="segmentation.aspp_channels"):
        build_segmenter({"model": "deeplab_v2", "backbone": "resnet50"}, CLASSES)
    with pytest.raises(FileNotFoundError, match="segmentation.weights"):
        build_segmenter(arch("deeplab_v2"), CLASSES, weights=tmp_path / "nope.pt")
