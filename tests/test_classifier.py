"""Classifier training (optimizer, schedule, resume) and CAM inference on the tiny demo."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO
from wsss_core.cams.infer import infer_cams, multiscale_cams, normalize_cams, size_batches
from wsss_core.cams.store import CAMReader
from wsss_core.data.transforms import Augment
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.models.classifier import load_classifier
from wsss_core.train import checkpoint as checkpoint_module
from wsss_core.train.classifier import method_settings, train_classifier
from wsss_core.train.loop import poly_lambda, step_lambda


def tiny_cfg(**changes):
    """The classifier section of config.yaml merged with config/tiny.yaml, random init for speed."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["classifier"]
    for key, value in yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())["classifier"].items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    cfg.update({"weights": "random", "method": "cam", **changes})  # tiny.yaml picks coattention for the DAG
    return cfg


def test_augment_is_seeded_and_crops_to_size():
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    aug = Augment(64, (40, 90), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(1)
    a = aug(image)
    torch.manual_seed(1)
    b = aug(image)
    assert a.shape == (3, 64, 64) and torch.equal(a, b)


def test_poly_schedule():
    f = poly_lambda(100, 0.9)
    assert f(0) == 1.0 and f(100) == 0.0 and f(50) == pytest.approx(0.5**0.9)


def test_training_uses_real_momentum_and_resumes_after_a_kill(tmp_path, tiny_demo, monkeypatch):
    cfg = tiny_cfg(epochs=2)
    out = dict(out_model=tmp_path / "a.pt", out_history_csv=tmp_path / "a.csv", checkpoint_dir=tmp_path / "ck_a")
    summary = train_classifier(tiny_demo, "train", cfg, **out)
    assert summary["epochs"] == 2 and np.isfinite(summary["final_loss"])
    history = (tmp_path / "a.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,lr") and len(history) == 3
    assert not (tmp_path / "ck_a" / "last.pt").exists()  # superseded by the finished model

    # Same run, killed right after the first epoch's checkpoint, then started again.
    real_save = checkpoint_module.save_checkpoint
    optimizers = []

    def save_then_die(path, **kw):
        optimizers.append(kw["optimizer"])
        real_save(path, **kw)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_die)
    out_b = dict(out_model=tmp_path / "b.pt", out_history_csv=tmp_path / "b.csv", checkpoint_dir=tmp_path / "ck_b")
    with pytest.raises(KeyboardInterrupt):
        train_classifier(tiny_demo, "train", cfg, **out_b)
    group = optimizers[0].param_groups[0]
    assert group["momentum"] == cfg["momentum"] and group["weight_decay"] == cfg["weight_decay"]
    assert (tmp_path / "ck_b" / "last.pt").exists() and not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
    train_classifier(tiny_demo, "train", cfg, **out_b)

    a, _ = load_classifier(tmp_path / "a.pt")
    b, _ = load_classifier(tmp_path / "b.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=f"{name} differs after resume")
    assert (tmp_path / "a.csv").read_text().split("\n")[1].split(",")[:2] == (tmp_path / "b.csv").read_text().split(
        "\n"
    )[1].split(",")[:2]

    # A checkpoint from other settings is not resumed: a fresh run with 1 epoch trains 1 epoch.
    train_classifier(
        tiny_demo,
        "train",
        tiny_cfg(epochs=1),
        out_model=tmp_path / "c.pt",
        out_history_csv=tmp_path / "c.csv",
        checkpoint_dir=tmp_path / "ck_b",
    )
    assert len((tmp_path / "c.csv").read_text().splitlines()) == 2


def test_cams_are_labelled_normalised_full_resolution(tmp_path, tiny_demo):
    cfg = tiny_cfg(epochs=1)
    train_classifier(
        tiny_demo,
        "train",
        cfg,
        out_model=tmp_path / "m.pt",
        out_history_csv=tmp_path / "h.csv",
        checkpoint_dir=tmp_path / "ck",
    )
    summary = infer_cams(tiny_demo, "train", tmp_path / "m.pt", tmp_path / "cams.h5", scales=[1.0, 0.5], batch_size=4)
    ds = VOCDataset(tiny_demo)
    ids = ds.ids("train")
    assert summary["images"] == len(ids) and summary["batches"] == -(-len(ids) // 4)  # one size: full batches
    with CAMReader(tmp_path / "cams.h5") as reader:
        assert sorted(reader.ids()) == sorted(ids)
        assert list(reader.attrs["scales"]) == [1.0, 0.5]
        for image_id in ids[:5]:
            cams, class_ids = reader.read(image_id)
            assert tuple(class_ids) == ds.labels(image_id)
            assert cams.shape == (len(class_ids), *ds.load_mask(image_id).shape)
            peaks = cams.reshape(len(cams), -1).max(1)
            # each map is divided by (its maximum + 1e-5): peak 1, unless the raw maximum is ~0 (untrained net)
            assert cams.min() >= 0 and np.all((np.abs(peaks - 1) < 2e-3) | (peaks < 1e-2))

    # The batched multi-scale path equals a direct per-image computation.
    model, meta = load_classifier(tmp_path / "m.pt")
    image_id = ids[0]
    image = torch.from_numpy(ds.load_image(image_id)).permute(2, 0, 1)[None]
    batched = multiscale_cams(model, image.repeat(3, 1, 1, 1), [1.0], meta["mean"], meta["std"], flip=True)[1]
    x = (image.float() / 255 - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = model.cams(x) + model.cams(x.flip(-1)).flip(-1)
    direct = torch.nn.functional.interpolate(direct, size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(batched, direct, rtol=1e-4, atol=1e-4)
    with CAMReader(tmp_path / "cams.h5") as reader:
        stored, labels = reader.read(image_id)
    two_scales = multiscale_cams(model, image, [1.0, 0.5], meta["mean"], meta["std"])[0]
    np.testing.assert_allclose(stored, normalize_cams(two_scales, labels).numpy(), atol=2e-3)


def test_size_batches_group_equal_sizes(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    for image_id, size in (("x", (20, 16)), ("z", (30, 10)), ("y", (20, 16)), ("w", (20, 16))):
        Image.new("RGB", size).save(tmp_path / "JPEGImages" / f"{image_id}.jpg")
    assert size_batches(VOCDataset(tmp_path), ["x", "z", "y", "w"], 2) == [[0, 2], [3], [1]]


def test_step_schedule_and_coattention_own_epochs():
    f = step_lambda(10, [5, 10], 0.1)
    assert [f(0), f(49), f(50), f(99)] == [1.0, 1.0, 0.1, 0.1] and f(100) == pytest.approx(0.01)
    co = {"epochs": 15, "batch_size": None, "lr": 0.001}
    shared = {"epochs": 5, "batch_size": 16, "lr": 0.005, "coattention": co}
    assert method_settings({"method": "coattention", **shared}) == {
        "method": "coattention",
        "epochs": 15,
        "batch_size": 16,
        "lr": 0.001,
        "coattention": co,
    }
    cam = {"method": "cam", **shared}
    assert method_settings(cam) is cam


def test_puzzle_variants_take_their_own_lr_and_batchnorm_mode_below_coattention_own_lr():
    puzzle = {"tiles": 2, "alpha": 1.0, "ramp": 0.5, "lr": 0.001, "frozen_bn": False}
    shared = {
        "epochs": 5,
        "batch_size": 16,
        "lr": 0.005,
        "frozen_bn": True,
        "puzzle": puzzle,
        "coattention": {"epochs": None, "batch_size": None, "lr": 0.002},
    }
    settings = method_settings({"method": "cam", "addons": ["puzzle"], **shared})
    assert (settings["lr"], settings["frozen_bn"]) == (0.001, False)
    settings = method_settings({"method": "coattention", "addons": ["puzzle"], **shared})
    assert (settings["lr"], settings["frozen_bn"]) == (0.002, False)  # co-attention's own step wins
    unset = {**shared, "puzzle": {**puzzle, "lr": None, "frozen_bn": None}}
    settings = method_settings({"method": "cam", "addons": ["puzzle"], **unset})
    assert (settings["lr"], settings["frozen_bn"]) == (0.005, True)  # null: the shared classifier settings
    settings = method_settings({"method": "cam", "addons": ["binomial"], **shared})
    assert (settings["lr"], settings["frozen_bn"]) == (0.005, True)  # the puzzle section applies to +puzzle only
