"""Segmentation inference: multi-scale + flip probabilities, label-map PNGs, CRF workers, atomic output."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wsss_core.data.transforms import normalize
from wsss_core.data.voc_layout import VOCDataset, voc_palette
from wsss_core.segmentation import predict as predict_module
from wsss_core.segmentation.predict import _predict_with_model, network_scales, predict_probs, predict_split

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CRF = dict(iterations=5, gt_prob=0.7, pos_xy_std=3, pos_w=3, bi_xy_std=50, bi_rgb_std=5, bi_w=10)


class PixelModel(nn.Module):
    """Logits from each pixel's colour alone (a seeded 1x1 conv): mirror-symmetric, scale-free."""

    def __init__(self, num_classes: int, seed: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 2)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))

    def forward(self, x):
        return self.conv(x)


class RampModel(PixelModel):
    """Pixel logits plus a left-to-right ramp per class: the mirrored image gives different logits."""

    def forward(self, x):
        ramp = torch.linspace(-2, 2, x.shape[-1], device=x.device).view(1, 1, 1, -1)
        return self.conv(x) + ramp * torch.arange(self.conv.out_channels, device=x.device).view(1, -1, 1, 1)


class RecordingModel(PixelModel):
    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return super().forward(x)


class FailingModel(PixelModel):
    """Works for ``calls`` forward passes, then fails: a job killed mid-way."""

    def __init__(self, num_classes: int, calls: int):
        super().__init__(num_classes)
        self.calls = calls

    def forward(self, x):
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("out of memory (simulated)")
        return super().forward(x)


def box_crf(image, probs, params):
    """Stand-in for the dense CRF: a 5x5 box filter of the probabilities (smooths, deterministic)."""
    t = torch.from_numpy(np.asarray(probs, np.float32))[None]
    return F.avg_pool2d(F.pad(t, (2, 2, 2, 2), mode="replicate"), 5, stride=1)[0].numpy()


def failing_crf(image, probs, params):
    raise ValueError("CRF blew up (simulated)")


def random_image(h=37, w=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def meta_for(root):
    return {"classes": list(VOCDataset(root).classes), "mean": MEAN, "std": STD, "arch": "stand-in", "config": {}}


def read_png(path):
    with Image.open(path) as img:
        return img.mode, img.getpalette(), np.asarray(img)


def test_probabilities_are_a_distribution_at_the_image_size_for_odd_sizes():
    model = PixelModel(5).eval()
    probs = predict_probs(model, random_image(37, 53), MEAN, STD, scales=(0.5, 1.0, 1.5, 0.75), flip=True)
    assert probs.shape == (5, 37, 53) and probs.dtype == torch.float32
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(0), torch.ones(37, 53))


def test_each_scale_and_its_mirror_go_through_the_network_in_one_batch():
    model = RecordingModel(3).eval()
    predict_probs(model, random_image(37, 53), MEAN, STD, scales=(0.5, 1.0, 1.5), flip=True)
    assert model.shapes == [(2, 3, 18, 26), (2, 3, 37, 53), (2, 3, 56, 80)]
    model.shapes.clear()
    predict_probs(model, random_image(37, 53), MEAN, STD, scales=(1.0,), flip=False)
    assert model.shapes == [(1, 3, 37, 53)]


def test_flip_average_equals_the_manual_average():
    model = RampModel(4).eval()
    image = random_image(20, 31, seed=3)
    x = normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, MEAN, STD)
    with torch.no_grad():
        plain = model(x).softmax(1)[0]
        mirrored = model(x.flip(-1)).softmax(1)[0].flip(-1)
    got = predict_probs(model, image, MEAN, STD, scales=(1.0,), flip=True)
    torch.testing.assert_close(got, (plain + mirrored) / 2)
    no_flip = predict_probs(model, image, MEAN, STD, scales=(1.0,), flip=False)
    torch.testing.assert_close(no_flip, plain)
    assert not torch.allclose(got, no_flip, atol=1e-3)  # the model really is asymmetric


def test_multi_scale_is_the_mean_of_the_single_scales():
    model = PixelModel(4, seed=1).eval()
    image = random_image(29, 41, seed=4)
    both = predict_probs(model, image, MEAN, STD, scales=(0.5, 1.5), flip=False)
    half = predict_probs(model, image, MEAN, STD, scales=(0.5,), flip=False)
    big = predict_probs(model, image, MEAN, STD, scales=(1.5,), flip=False)
    torch.testing.assert_close(both, (half + big) / 2)
    assert not torch.allclose(half, big, atol=1e-3)
    # A flat image gives the same answer at every scale: resizing there and back must not shift anything.
    flat = np.full((29, 41, 3), (200, 30, 90), np.uint8)
    torch.testing.assert_close(
        predict_probs(model, flat, MEAN, STD, scales=(0.5, 1.0, 1.75), flip=True),
        predict_probs(model, flat, MEAN, STD, scales=(1.0,), flip=False),
    )


def test_bad_arguments_are_named():
    model = PixelModel(3).eval()
    with pytest.raises(ValueError, match="argument image"):
        predict_probs(model, random_image().astype(np.float32), MEAN, STD)
    with pytest.raises(ValueError, match="argument scales"):
        predict_probs(model, random_image(), MEAN, STD, scales=())
    with pytest.raises(ValueError, match="argument scales"):
        predict_probs(model, random_image(), MEAN, STD, scales=(1.0, -0.5))


def test_label_pngs_for_every_image_of_the_split(tiny_demo, tmp_path):
    ds = VOCDataset(tiny_demo)
    model = PixelModel(ds.num_classes, seed=2)
    out = tmp_path / "pred" / "val"
    summary = _predict_with_model(
        model, meta_for(tiny_demo), tiny_demo, "val", out, scales=(1.0, 0.5), flip=True, crf=None
    )
    ids = ds.ids("val")
    assert summary["images"] == len(ids) and summary["seconds"] >= 0 and summary["crf"] is False
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.png" for i in ids)
    seen = set()
    for image_id in ids:
        mode, palette, labels = read_png(out / f"{image_id}.png")
        assert mode == "P" and palette[:48] == voc_palette()[:48]
        image = ds.load_image(image_id)
        expected = predict_probs(model, image, MEAN, STD, scales=(1.0, 0.5), flip=True).argmax(0).numpy()
        np.testing.assert_array_equal(labels, expected)
        seen |= set(np.unique(labels).tolist())
    assert len(seen) > 1  # the stand-in really separates colours, so the comparison above means something


def test_input_scale_of_training_multiplies_the_evaluation_scales(tiny_demo, tmp_path):
    meta = meta_for(tiny_demo)
    assert network_scales(meta, [1.0, 0.5]) == [1.0, 0.5]  # models saved without the key
    meta["config"] = {"input_scale": 2.0}
    assert network_scales(meta, [1.0, 0.5]) == [2.0, 1.0]
    model = PixelModel(VOCDataset(tiny_demo).num_classes, seed=2)
    summary = _predict_with_model(
        model, meta, tiny_demo, "val", tmp_path / "p", scales=(1.0, 0.5), flip=False, crf=None
    )
    assert summary["scales"] == [2.0, 1.0]
    image_id = VOCDataset(tiny_demo).ids("val")[0]
    expected = (
        predict_probs(model, VOCDataset(tiny_demo).load_image(image_id), MEAN, STD, scales=(2.0, 1.0), flip=False)
        .argmax(0)
        .numpy()
    )
    np.testing.assert_array_equal(read_png(tmp_path / "p" / f"{image_id}.png")[2], expected)


def test_failure_midway_keeps_the_old_output(tiny_demo, tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "old.png").write_bytes(b"previous run")
    model = FailingModel(VOCDataset(tiny_demo).num_classes, calls=3)
    with pytest.raises(RuntimeError, match="simulated"):
        _predict_with_model(model, meta_for(tiny_demo), tiny_demo, "val", out, scales=(1.0,), flip=False, crf=None)
    assert [p.name for p in tmp_path.iterdir()] == ["pred"]  # no temporary folder left beside it
    assert [p.name for p in out.iterdir()] == ["old.png"]


def test_classes_mismatch_names_the_model_file(tiny_demo, tmp_path):
    meta = meta_for(tiny_demo)
    meta["classes"] = ["background", "cat", "dog"]
    with pytest.raises(ValueError, match=r"seg/model\.pt: trained on classes \['background', 'cat', 'dog'\]"):
        _predict_with_model(
            PixelModel(3),
            meta,
            tiny_demo,
            "val",
            tmp_path / "out",
            scales=(1.0,),
            flip=True,
            crf=None,
            model_path="seg/model.pt",
        )
    with pytest.raises(ValueError, match=r"seg/model\.pt: 3 output channels"):
        _predict_with_model(
            PixelModel(3),
            meta_for(tiny_demo),
            tiny_demo,
            "val",
            tmp_path / "out",
            scales=(1.0,),
            flip=True,
            crf=None,
            model_path="seg/model.pt",
        )
    assert not (tmp_path / "out").exists()


def test_predict_split_loads_the_model_and_sets_threads(tiny_demo, tmp_path, monkeypatch):
    ds = VOCDataset(tiny_demo)
    calls = []

    def load_segmenter(path, device="cpu"):
        calls.append((str(path), torch.device(device)))
        return PixelModel(ds.num_classes, seed=5), meta_for(tiny_demo)

    monkeypatch.setattr(predict_module, "load_segmenter", load_segmenter)
    threads = torch.get_num_threads()
    try:
        summary = predict_split(
            tmp_path / "model.pt",
            tiny_demo,
            "val",
            tmp_path / "out",
            scales=[1.0],
            flip=True,
            crf=None,
            threads=1,
            device="cpu",
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert calls == [(str(tmp_path / "model.pt"), torch.device("cpu"))]
    assert summary["images"] == len(ds.ids("val")) == len(list((tmp_path / "out").iterdir()))


def _outputs(folder):
    return {p.name: read_png(p)[2] for p in sorted(folder.iterdir())}


def test_crf_in_worker_processes_matches_the_parent(tiny_demo, tmp_path):
    ds = VOCDataset(tiny_demo)
    model, meta = PixelModel(ds.num_classes, seed=2), meta_for(tiny_demo)
    args = dict(scales=(1.0,), flip=True, crf={"stand-in": True}, crf_fn=box_crf)
    one = _predict_with_model(model, meta, tiny_demo, "val", tmp_path / "one", workers=1, **args)
    two = _predict_with_model(model, meta, tiny_demo, "val", tmp_path / "two", workers=2, **args)
    assert one["crf_workers"] == 1 and two["crf_workers"] == 2
    got_one, got_two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert got_one.keys() == {f"{i}.png" for i in ds.ids("val")}
    assert all(np.array_equal(got_one[k], got_two[k]) for k in got_one)
    _predict_with_model(model, meta, tiny_demo, "val", tmp_path / "plain", scales=(1.0,), flip=True, crf=None)
    plain = _outputs(tmp_path / "plain")
    assert any(not np.array_equal(plain[k], got_one[k]) for k in plain)  # the CRF step really ran
    first = ds.ids("val")[0]
    probs = predict_probs(model, ds.load_image(first), MEAN, STD, scales=(1.0,), flip=True).numpy()
    np.testing.assert_array_equal(got_two[f"{first}.png"], box_crf(None, probs, {}).argmax(0))


def test_crf_worker_failure_keeps_the_old_output(tiny_demo, tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "old.png").write_bytes(b"previous run")
    model = PixelModel(VOCDataset(tiny_demo).num_classes)
    with pytest.raises(ValueError, match="CRF blew up"):
        _predict_with_model(
            model,
            meta_for(tiny_demo),
            tiny_demo,
            "val",
            out,
            scales=(1.0,),
            flip=False,
            crf={},
            workers=2,
            crf_fn=failing_crf,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["pred"]
    assert [p.name for p in out.iterdir()] == ["old.png"]
    with pytest.raises(TypeError, match="argument crf"):
        _predict_with_model(model, meta_for(tiny_demo), tiny_demo, "val", out, scales=(1.0,), flip=False, crf=True)


def test_dense_crf_post_processing(tiny_demo, tmp_path):
    crf_module = pytest.importorskip("wsss_core.pseudo.crf")
    ds = VOCDataset(tiny_demo)
    model, meta = PixelModel(ds.num_classes, seed=2), meta_for(tiny_demo)
    _predict_with_model(model, meta, tiny_demo, "val", tmp_path / "one", scales=(1.0,), flip=True, crf=CRF)
    _predict_with_model(model, meta, tiny_demo, "val", tmp_path / "two", scales=(1.0,), flip=True, crf=CRF, workers=2)
    got_one, got_two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert got_one.keys() == {f"{i}.png" for i in ds.ids("val")}
    assert all(np.array_equal(got_one[k], got_two[k]) for k in got_one)
    first = ds.ids("val")[0]
    image = ds.load_image(first)
    probs = predict_probs(model, image, MEAN, STD, scales=(1.0,), flip=True).numpy()
    np.testing.assert_array_equal(got_one[f"{first}.png"], crf_module.crf_probs(image, probs, CRF).argmax(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model = RampModel(6, seed=7).eval()
    image = random_image(45, 67, seed=8)
    cpu = predict_probs(model, image, MEAN, STD, scales=(0.5, 1.0, 1.5), flip=True)
    gpu = predict_probs(model.to("cuda"), image, MEAN, STD, scales=(0.5, 1.0, 1.5), flip=True, device="cuda")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
