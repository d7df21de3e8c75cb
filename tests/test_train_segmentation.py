"""Segmentation training (GT masks or pseudo-label PNGs, void pixels, resume), joint augmentation, loop helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from snakemake.utils import validate

from conftest import REPO
from wsss_core.data.demo import DEFAULT, generate
from wsss_core.data.joint_transforms import JointAugment
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset, voc_palette
from wsss_core.fileio import save_label_png
from wsss_core.models.deeplab import SEG_ARCH_KEYS, build_segmenter, load_segmenter
from wsss_core.train import segmentation as segmentation_module
from wsss_core.train import checkpoint as checkpoint_module
from wsss_core.train.checkpoint import seed_everything
from wsss_core.train.loop import (
    StateBundle,
    autocast,
    grad_scaler,
    make_optimizer,
    memory_format,
    poly_lambda,
    schedule_lambda,
    write_history_csv,
)
from wsss_core.train.segmentation import segmentation_loss, train_segmentation

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
LEARN_IMAGES, LEARN_STEPS, LEARN_MARGIN = 80, 96, 0.01  # 64 training images seen 12 times


def seg_cfg(**changes) -> dict:
    """A `segmentation` config section small enough for seconds-long CPU runs on the tiny demo."""
    cfg = dict(
        model="deeplab_v3plus",
        backbone="efficientnet_lite0",
        weights="random",
        weights_dir=None,
        output_stride=16,
        aspp_channels=32,
        frozen_bn=True,
        epochs=2,
        batch_size=8,
        optimizer="sgd",
        lr=0.01,
        new_layer_lr_mult=10,
        momentum=0.9,
        weight_decay=1e-4,
        lr_schedule="poly",
        poly_power=0.9,
        warmup_steps=0,
        input_scale=1.0,
        crop_size=48,
        scale_range=[0.75, 1.25],
        flip=True,
        color_jitter=0.2,
        num_workers=0,
        seed=0,
        amp=False,
        amp_dtype="float16",
        channels_last=False,
    )
    cfg.update(changes)
    return cfg


def outputs(tmp_path, name: str) -> dict:
    return dict(
        out_model=tmp_path / f"{name}.pt",
        out_history_csv=tmp_path / f"{name}.csv",
        checkpoint_dir=tmp_path / f"ck_{name}",
    )


def write_labels(folder, ids, make) -> None:
    for image_id in ids:
        save_label_png(folder / f"{image_id}.png", make(image_id), voc_palette())


# ------------------------------------------------------------------ training


def test_trains_resumes_after_a_kill_and_round_trips(tmp_path, tiny_demo, monkeypatch):
    cfg = seg_cfg()
    built = []
    real_build = segmentation_module.build_segmenter

    def build_and_keep(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(segmentation_module, "build_segmenter", build_and_keep)
    summary = train_segmentation(tiny_demo, "train", cfg, **outputs(tmp_path, "a"))
    assert summary["epochs"] == 2 and np.isfinite(summary["final_loss"]) and 0 <= summary["final_pixel_acc"] <= 1
    history = (tmp_path / "a.csv").read_text().splitlines()
    assert history[0] == "epoch,loss,pixel_acc,lr,seconds" and len(history) == 3
    assert not (tmp_path / "ck_a" / "last.pt").exists()  # superseded by the finished model

    # Round trip: the loaded model computes exactly what the trained one computed.
    model, meta = load_segmenter(tmp_path / "a.pt")
    assert not model.training and meta["labels"] == "gt" and meta["split"] == "train" and meta["config"] == cfg
    assert meta["arch"] == {
        "model": "deeplab_v3plus",
        "backbone": "efficientnet_lite0",
        "output_stride": 16,
        "aspp_channels": 32,
    } and meta["classes"] == list(VOCDataset(tiny_demo).classes)
    assert meta["stride"] == 16 and meta["mean"] == list(model.mean)
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), built[0].eval()(x), rtol=0, atol=0)

    # Same run, killed right after the first epoch's checkpoint, then started again.
    real_save = checkpoint_module.save_checkpoint

    def save_then_die(path, **kw):
        real_save(path, **kw)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_segmentation(tiny_demo, "train", cfg, **outputs(tmp_path, "b"))
    assert (tmp_path / "ck_b" / "last.pt").exists() and not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
    train_segmentation(tiny_demo, "train", cfg, **outputs(tmp_path, "b"))

    b, _ = load_segmenter(tmp_path / "b.pt")
    for (name, pa), pb in zip(model.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=f"{name} differs after resume")
    losses = [[row.split(",")[:3] for row in (tmp_path / f"{n}.csv").read_text().splitlines()] for n in "ab"]
    assert losses[0] == losses[1]


def default_segmentation_config() -> dict:
    """config.yaml's segmentation section with the schema's defaults filled in: the recipe users get."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, str(REPO / "config" / "schema.yaml"))
    return {k: v for k, v in config["segmentation"].items() if k != "compare"}


def test_the_default_recipe_learns_demo_images_within_a_few_dozen_steps(tmp_path):
    """A recipe that cannot learn predicts background everywhere: its train pixel accuracy stays at the
    background share. The default recipe must beat that share within LEARN_STEPS steps on demo images."""
    root = tmp_path / "demo"
    generate(root, **dict(DEFAULT, n_images=LEARN_IMAGES))  # the demo's first images, at its size and classes
    ds = VOCDataset(root)
    ids = ds.ids("train")
    pixels = np.concatenate([ds.load_mask(i).ravel() for i in ids])
    background_share = float((pixels[pixels != IGNORE_INDEX] == 0).mean())
    cfg = default_segmentation_config()
    cfg.update(epochs=LEARN_STEPS // (len(ids) // cfg["batch_size"]), num_workers=0)
    train_segmentation(root, "train", cfg, **outputs(tmp_path, "demo"), threads=2)
    rows = [line.split(",") for line in (tmp_path / "demo.csv").read_text().splitlines()[1:]]
    acc = [float(r[2]) for r in rows]
    assert acc[-1] > background_share + LEARN_MARGIN, (acc, background_share)


def test_adamw_with_cosine_decay_after_a_warm_up_trains(tmp_path, tiny_demo):
    cfg = seg_cfg(optimizer="adamw", lr=0.001, lr_schedule="cosine", warmup_steps=2, epochs=2)
    train_segmentation(tiny_demo, "val", cfg, **outputs(tmp_path, "adamw"))
    rows = [line.split(",") for line in (tmp_path / "adamw.csv").read_text().splitlines()[1:]]
    lrs = [float(r[3]) for r in rows]
    assert len(rows) == 2 and all(np.isfinite(float(r[1])) for r in rows) and 0.0 <= lrs[1] < lrs[0] <= 0.001
    assert torch.load(tmp_path / "adamw.pt", weights_only=True)["meta"]["config"]["optimizer"] == "adamw"


def test_pseudo_label_pngs_and_void_pixels(tmp_path, tiny_demo):
    ds = VOCDataset(tiny_demo)
    ids = ds.ids("val")

    def with_void(image_id):
        mask = ds.load_mask(image_id).copy()
        mask[:20] = IGNORE_INDEX  # a pseudo label's "don't know" band
        return mask

    write_labels(tmp_path / "pseudo", ids, with_void)
    cfg = seg_cfg(epochs=1, batch_size=5)
    train_segmentation(tiny_demo, "val", cfg, label_dir=tmp_path / "pseudo", **outputs(tmp_path, "p"))
    _, meta = load_segmenter(tmp_path / "p.pt")
    assert meta["labels"] == str(tmp_path / "pseudo")

    # All-void labels teach nothing: loss 0, no accuracy, and without weight decay the weights never move.
    write_labels(tmp_path / "void", ids, lambda i: np.full(ds.load_mask(i).shape, IGNORE_INDEX, np.uint8))
    cfg = seg_cfg(epochs=1, batch_size=5, weight_decay=0.0)
    summary = train_segmentation(tiny_demo, "val", cfg, label_dir=tmp_path / "void", **outputs(tmp_path, "v"))
    assert summary["final_loss"] == 0.0 and np.isnan(summary["final_pixel_acc"])
    trained, _ = load_segmenter(tmp_path / "v.pt")
    seed_everything(cfg["seed"])  # what train_segmentation builds before its first step
    fresh = build_segmenter({k: cfg[k] for k in SEG_ARCH_KEYS}, ds.num_classes)
    for (name, p), q in zip(fresh.named_parameters(), trained.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{name} moved on void labels")


def test_void_pixels_do_not_contribute_to_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, requires_grad=True)
    labels = torch.randint(0, 4, (2, 6, 7))
    labels[0, :3] = IGNORE_INDEX
    loss, correct, valid = segmentation_loss(logits, labels)
    keep = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    torch.testing.assert_close(loss, expected)
    assert valid == int(keep.sum()) and correct == int(((logits.argmax(1) == labels) & keep).sum())
    loss.backward()
    assert logits.grad.permute(0, 2, 3, 1)[~keep].abs().max() == 0 and logits.grad.abs().max() > 0

    logits.grad = None
    loss, correct, valid = segmentation_loss(logits, torch.full_like(labels, IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and (correct, valid) == (0, 0) and logits.grad.abs().max() == 0


def test_input_scale_multiplies_the_training_scale_range_and_is_saved(tmp_path, tiny_demo, monkeypatch):
    ranges = []

    class Spy(JointAugment):
        def __init__(self, crop_size, scale_range, *args, **kwargs):
            ranges.append(scale_range)
            super().__init__(crop_size, scale_range, *args, **kwargs)

    monkeypatch.setattr(segmentation_module, "JointAugment", Spy)
    cfg = seg_cfg(input_scale=2.0, scale_range=[0.75, 1.25], epochs=1, batch_size=10)
    train_segmentation(tiny_demo, "val", cfg, **outputs(tmp_path, "s"))
    assert ranges == [(1.5, 2.5)]
    assert load_segmenter(tmp_path / "s.pt")[1]["config"]["input_scale"] == 2.0  # predictions scale by it too
    with pytest.raises(ValueError, match="segmentation.input_scale"):
        train_segmentation(tiny_demo, "val", seg_cfg(input_scale=0.0), **outputs(tmp_path, "z"))


def test_label_problems_name_the_file_before_training(tmp_path, tiny_demo):
    ds = VOCDataset(tiny_demo)
    ids = ds.ids("val")
    write_labels(tmp_path / "pseudo", ids[1:], ds.load_mask)
    with pytest.raises(FileNotFoundError, match=f"{ids[0]}.png"):
        train_segmentation(tiny_demo, "val", seg_cfg(), label_dir=tmp_path / "pseudo", **outputs(tmp_path, "m"))
    assert not (tmp_path / "ck_m").exists() and not (tmp_path / "m.pt").exists()

    write_labels(tmp_path / "pseudo", ids[:1], lambda i: np.full(ds.load_mask(i).shape, ds.num_classes, np.uint8))
    with pytest.raises(ValueError, match=f"{ids[0]}.png"):  # a class id the dataset does not have
        train_segmentation(
            tiny_demo, "val", seg_cfg(batch_size=10), label_dir=tmp_path / "pseudo", **outputs(tmp_path, "m")
        )
    with pytest.raises(ValueError, match="segmentation.poly_power"):
        train_segmentation(
            tiny_demo, "val", {k: v for k, v in seg_cfg().items() if k != "poly_power"}, **outputs(tmp_path, "m")
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP runs on CUDA only")
@pytest.mark.parametrize("dtype,channels_last", [("float16", False), ("bfloat16", True)])
def test_amp_on_cuda_trains_finite(tmp_path, tiny_demo, dtype, channels_last):
    cfg = seg_cfg(amp=True, amp_dtype=dtype, channels_last=channels_last, epochs=1)
    summary = train_segmentation(tiny_demo, "train", cfg, device="cuda", **outputs(tmp_path, "amp"))
    assert np.isfinite(summary["final_loss"])
    model, _ = load_segmenter(tmp_path / "amp.pt")  # weights saved in the plain layout, loadable anywhere
    assert all(p.is_contiguous() for p in model.parameters())


def test_precision_and_layout_options_apply_on_cuda_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast(cpu, True, "bfloat16").__class__.__name__ == "nullcontext"
    assert not grad_scaler(cpu, True).is_enabled()
    assert not grad_scaler(cuda, True, "bfloat16").is_enabled()  # bf16 needs no loss scaling
    assert not grad_scaler(cuda, False).is_enabled()
    assert memory_format(cuda, True) == torch.channels_last
    assert memory_format(cpu, True) == memory_format(cuda, False) == torch.contiguous_format


# ------------------------------------------------------------------ joint augmentation

CLASS_COLOURS = torch.tensor([[0.1, 0.2, 0.9], [0.9, 0.1, 0.2], [0.2, 0.9, 0.1], [0.8, 0.8, 0.1], [0.5, 0.5, 0.5]])


def coded_pair(h=37, w=53):
    """A label map of large asymmetric blocks (incl. a void block) and an image whose colour is its label."""
    label = np.zeros((h, w), np.uint8)
    label[: h // 3, : w // 2] = 1
    label[h // 3 :, w // 3 : 2 * w // 3] = 2
    label[2 * h // 3 :, 2 * w // 3 :] = 3
    label[:8, -10:] = IGNORE_INDEX
    colours = CLASS_COLOURS[torch.from_numpy(np.where(label == IGNORE_INDEX, 4, label).astype(np.int64))]
    return (colours.numpy() * 255).round().astype(np.uint8), label


@pytest.mark.parametrize("seed", range(8))
def test_joint_augment_keeps_image_and_label_aligned(seed):
    image, label = coded_pair()
    aug = JointAugment(48, (0.6, 1.6), MEAN, STD, flip=True, color_jitter=0.0)
    torch.manual_seed(seed)
    x, y = aug(image, label)
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and y.shape == (48, 48) and y.dtype == torch.int64
    rgb = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    # interior pixels (a 5x5 neighbourhood of one label) carry exactly their label's colour
    padded = F.pad(y[None, None].float(), (2, 2, 2, 2), value=-1)
    uniform = (F.max_pool2d(padded, 5, 1) == -F.max_pool2d(-padded, 5, 1))[0, 0]
    pad = (x == 0).all(0)  # mean colour: padding
    for cls in range(4):
        inside = uniform & (y == cls) & ~pad
        if inside.any():
            err = (rgb[:, inside] - CLASS_COLOURS[cls][:, None]).abs().max()
            assert err < 0.02, f"class {cls} pixels have the wrong colour ({err:.3f}): image and label misaligned"
    void_inside = uniform & (y == IGNORE_INDEX) & ~pad
    assert torch.allclose(rgb[:, void_inside], CLASS_COLOURS[4][:, None], atol=0.02)
    assert (y[pad] == IGNORE_INDEX).all()  # padding is void, never background


@pytest.mark.parametrize("scale", [0.6, 1.7])
def test_labels_are_resized_like_pil_nearest(scale):
    label = np.random.default_rng(0).integers(0, 5, (37, 53)).astype(np.uint8)
    image = np.zeros((*label.shape, 3), np.uint8)
    size = (round(37 * scale), round(53 * scale))
    aug = JointAugment(max(size), (scale, scale), MEAN, STD, flip=False)
    _, y = aug(image, label)
    top, left = [int(i.min()) for i in (y != IGNORE_INDEX).nonzero(as_tuple=True)]
    expected = np.asarray(Image.fromarray(label).resize(size[::-1], Image.NEAREST))
    np.testing.assert_array_equal(y[top : top + size[0], left : left + size[1]].numpy(), expected)


def test_joint_augment_flips_scales_pads_and_repeats_under_a_seed():
    image, label = coded_pair()
    aug = JointAugment(64, (0.5, 0.5), MEAN, STD, flip=True, color_jitter=0.3)
    seen_corner = set()
    for seed in range(6):
        torch.manual_seed(seed)
        x, y = aug(image, label)
        torch.manual_seed(seed)
        x2, y2 = aug(image, label)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        content = y != IGNORE_INDEX
        rows, cols = content.any(1).nonzero(), content.any(0).nonzero()
        # the 37 x 53 image at half size (round(18.5), round(26.5)) on a 64 px canvas padded with void
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (18, 26)
        assert (x[:, y == IGNORE_INDEX] == 0).all(0).sum() == 64 * 64 - 18 * 26
        # top-left corner: class 1 as drawn, the void block when flipped
        seen_corner.add(int(y[rows.min(), cols.min()]))
    assert seen_corner == {1, IGNORE_INDEX}
    with pytest.raises(ValueError, match="scale_range"):
        JointAugment(64, (1.5, 0.5), MEAN, STD)


# ------------------------------------------------------------------ loop helpers


def test_poly_schedule_and_history_csv(tmp_path):
    f = poly_lambda(100, 0.9)
    assert f(0) == 1.0 and f(100) == 0.0 and f(150) == 0.0 and f(50) == pytest.approx(0.5**0.9)
    write_history_csv(tmp_path / "h.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    assert (tmp_path / "h.csv").read_text().splitlines() == ["epoch,loss", "1,0.5", "2,0.25"]
    assert [p.name for p in tmp_path.iterdir()] == ["h.csv"]  # no temporary left behind
    with pytest.raises(ValueError, match="h2.csv"):
        write_history_csv(tmp_path / "h2.csv", [])


def test_warm_up_then_poly_or_cosine_decay():
    for schedule in ("poly", "cosine"):
        f = schedule_lambda(schedule, 10, warmup_steps=4, poly_power=1.0)
        factors = [f(step) for step in range(11)]
        assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear warm-up, full rate at its end
        assert all(a > b for a, b in zip(factors[4:], factors[5:])) and factors[10] == 0.0
    cosine = schedule_lambda("cosine", 10)
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and cosine(12) == 0.0
    assert schedule_lambda("poly", 10, poly_power=0.9)(5) == pytest.approx(poly_lambda(10, 0.9)(5))
    with pytest.raises(ValueError, match="step"):
        schedule_lambda("step", 10)


def test_optimizers_give_the_new_layers_their_multiple():
    old, new = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(2))]
    for name, kind in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        opt = make_optimizer(name, old, new, lr=0.01, new_layer_lr_mult=10, momentum=0.9, weight_decay=1e-4)
        assert isinstance(opt, kind) and [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1])
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer("rmsprop", old, new, lr=0.01, new_layer_lr_mult=10, momentum=0.9, weight_decay=1e-4)


def test_state_bundle_round_trips_and_skips_empty_states():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(10, 1.0))
    for _ in range(3):
        opt.step()
        sched.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    state = StateBundle(scheduler=sched, scaler=scaler).state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, poly_lambda(10, 1.0))
    StateBundle(scheduler=sched2, scaler=torch.amp.GradScaler("cuda", enabled=False)).load_state_dict(state)
    assert sched2.last_epoch == 3
    with pytest.raises(KeyError, match="scaler"):
        StateBundle(scheduler=sched2, scaler=scaler).load_state_dict({"scheduler": state["scheduler"]})
