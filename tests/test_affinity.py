"""AffinityNet: confident labels (alpha direction, void band, CRF), training + resume, propagation over a split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_dataset
from test_pseudo_labels import CRF, read_png, write_store

from wsss_core.cams.evaluate import sweep
from wsss_core.cams.store import CAMReader
from wsss_core.data.subset import resized_subset
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset, voc_palette
from wsss_core.fileio import save_label_png
from wsss_core.models.affinitynet import EMBED_CHANNELS, build_affinitynet, load_affinitynet
from wsss_core.pseudo.saliency_store import SaliencyWriter
from wsss_core.refine.affinity_labels import alpha_labels, confident_labels, make_affinity_labels
from wsss_core.refine.propagate import embed_image, pair_separation, propagate_split
from wsss_core.refine.random_walk import propagate_cams
from wsss_core.train import checkpoint as checkpoint_module
from wsss_core.train import engine as engine_module
from wsss_core.train.affinity import train_affinity

# Max-CAM values well away from the two cut points, ~0.2755 (alpha 4) and ~0.0770 (alpha 32).
VALUES = np.array([0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.35, 0.5, 0.8, 1.0])
TRAIN = dict(
    weights="imagenet",
    epochs=2,
    batch_size=5,
    crop_size=48,
    scale_range=(0.9, 1.1),
    color_jitter=0.0,
    lr=0.01,
    amp=False,
)


# The sanity check's recipe: 96-px photos whole (a 6x6 grid at stride 16), AdamW with the embedding convs at 30x
# (benchmarks/quality/affinity_overfit.py compares recipes on the same photos).
OVERFIT = dict(
    output_stride=16,
    radius=4,
    crop_size=96,
    scale_range=(1.0, 1.0),
    flip=False,
    color_jitter=0.0,
    epochs=200,
    batch_size=8,
    optimizer="adamw",
    lr=0.0003,
    new_layer_lr_mult=30,
)


def aff_cfg(**changes) -> dict:
    """The training keys of an ``affinity`` config section (the schema's defaults), with TRAIN's and ``changes``."""
    cfg = dict(
        backbone="efficientnet_lite0",
        weights="imagenet",
        weights_dir=None,
        output_stride=8,
        frozen_bn=True,
        radius=5,
        epochs=8,
        batch_size=8,
        optimizer="sgd",
        lr=0.01,
        new_layer_lr_mult=10,
        momentum=0.9,
        weight_decay=1e-4,
        poly_power=0.9,
        crop_size=448,
        scale_range=(0.9, 1.5),
        flip=True,
        color_jitter=0.3,
        num_workers=0,
        seed=0,
        amp=True,
        amp_dtype="float16",
        channels_last=False,
    )
    cfg.update(TRAIN)
    cfg.update(changes)
    return cfg


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs; the machine is shared
    yield
    torch.set_num_threads(threads)


def expected_zones(cams, class_ids):
    """PSA's rule spelled out per pixel for bg = (1 - m)^alpha, argmax ties going to background."""
    out = np.empty(cams.shape[1:], np.uint8)
    for y, x in np.ndindex(*out.shape):
        v = cams[:, y, x]
        m = v.max()
        if m > (1 - m) ** 4:  # foreground even against the strong (alpha 4) background
            out[y, x] = class_ids[int(v.argmax())]
        elif (1 - m) ** 32 >= m:  # background even when it is weak (alpha 32)
            out[y, x] = 0
        else:
            out[y, x] = IGNORE_INDEX
    return out


def test_zones_follow_the_alpha_direction_without_crf():
    rng = np.random.default_rng(0)
    cams = rng.choice(VALUES, (2, 15, 17)).astype(np.float32)
    image = rng.integers(0, 256, (15, 17, 3), dtype=np.uint8)
    got = confident_labels(image, cams, [2, 4], crf=None)
    np.testing.assert_array_equal(got, expected_zones(cams, [2, 4]))
    assert {0, 2, 4, IGNORE_INDEX} <= set(np.unique(got))
    # clearly off -> background, weak -> void, clearly on -> class
    row = np.array([[[0.03, 0.15, 0.5]]], np.float32)
    np.testing.assert_array_equal(confident_labels(image[:1, :3], row, [7], crf=None), [[0, IGNORE_INDEX, 7]])
    # the high-alpha map has the weaker background, so more foreground than the low-alpha map
    low, high = (alpha_labels(image, cams, [2, 4], alpha=a, crf=None) for a in (4, 32))
    assert ((low != 0) <= (high != 0)).all() and (high != 0).sum() > (low != 0).sum()
    for low_alpha, high_alpha in ((32, 4), (8, 8), (0, 32)):
        with pytest.raises(ValueError, match="low_alpha"):
            confident_labels(image, cams, [2, 4], low_alpha=low_alpha, high_alpha=high_alpha, crf=None)
    with pytest.raises(ValueError, match="image size"):
        confident_labels(image[:5], cams, [2, 4], crf=None)
    none = confident_labels(image, cams[:0], [], crf=CRF)
    assert (none == 0).all()


def test_crf_keeps_the_zones_in_the_image_labels():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:40, :48]
    blob = np.exp(-((yy - 20) ** 2 + (xx - 16) ** 2) / 120.0)
    cams = np.stack([blob, np.roll(blob, 20, axis=1)]).astype(np.float32)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image[cams.max(0) > 0.3] = (200, 40, 40)
    got = confident_labels(image, cams, [1, 3], crf=CRF)
    assert set(np.unique(got)) == {0, 1, 3, IGNORE_INDEX}
    plain = confident_labels(image, cams, [1, 3], crf=None)
    assert (got == plain).mean() > 0.8  # the CRF moves edges, not whole regions


@pytest.mark.parametrize(
    "backbone,stride,channels", [("efficientnet_lite0", 16, [40, 112, 1280]), ("resnet50", 8, [512, 1024, 2048])]
)
def test_affinitynet_reads_three_levels_at_one_stride(backbone, stride, channels):
    model = build_affinitynet({"backbone": backbone, "output_stride": stride}).eval()
    x = torch.randn(1, 3, 41, 57)
    with torch.no_grad():
        levels, emb = model.feature_levels(x), model(x)
    assert [lv.shape[1] for lv in levels] == channels
    assert emb.shape == (1, EMBED_CHANNELS, -(-41 // stride), -(-57 // stride)) and emb.min() >= -1  # ELU
    pretrained, new = model.param_groups()
    head = [*model.levels.parameters(), *model.mix.parameters()]
    assert {id(p) for p in new} == {id(p) for p in head} and not {id(p) for p in pretrained} & {id(p) for p in head}
    with pytest.raises(ValueError, match="no feature levels known for backbone VGG16LargeFOV"):
        build_affinitynet({"backbone": "vgg16_largefov", "output_stride": 8})


@pytest.fixture(scope="module")
def setup(tiny_demo, tmp_path_factory):
    """The demo's val split (10 images), a CAM store of mask-derived CAMs, its confident labels, a trained net."""
    tmp = tmp_path_factory.mktemp("affinity")
    dataset = VOCDataset(tiny_demo)
    ids = dataset.ids("val")
    store = write_store(tmp / "val.h5", dataset, ids)
    labels = tmp / "labels"
    record = make_affinity_labels(store, tiny_demo, "val", labels, crf=None)
    assert record["images"] == len(ids)
    outputs = dict(out_model=tmp / "a.pt", out_history_csv=tmp / "a.csv", checkpoint_dir=tmp / "ck_a")
    summary = train_affinity(tiny_demo, "val", aff_cfg(), label_dir=labels, **outputs)
    return dict(dataset=dataset, ids=ids, store=store, labels=labels, tmp=tmp, summary=summary, **outputs)


def test_label_folder_matches_the_rule_and_workers(setup, tmp_path):
    dataset, ids, store = setup["dataset"], setup["ids"], setup["store"]
    with CAMReader(store) as reader:
        for image_id in ids:
            mode, palette, labels = read_png(setup["labels"] / f"{image_id}.png")
            cams, class_ids = reader.read(image_id)
            assert mode == "P" and palette == voc_palette()
            np.testing.assert_array_equal(
                labels, confident_labels(dataset.load_image(image_id), cams, class_ids, crf=None)
            )
    folders = {w: tmp_path / f"w{w}" for w in (1, 2)}
    for workers, folder in folders.items():
        make_affinity_labels(store, dataset.root, "val", folder, crf=CRF, workers=workers)
    for image_id in ids:
        assert (folders[1] / f"{image_id}.png").read_bytes() == (folders[2] / f"{image_id}.png").read_bytes()


def test_saliency_gate_keeps_a_label_only_where_the_saliency_map_agrees(setup, tmp_path):
    rng = np.random.default_rng(3)
    cams = rng.choice(VALUES, (2, 15, 17)).astype(np.float32)
    image = rng.integers(0, 256, (15, 17, 3), dtype=np.uint8)
    saliency = rng.random((15, 17)).astype(np.float32)
    plain = confident_labels(image, cams, [2, 4], crf=None)
    gated = confident_labels(image, cams, [2, 4], crf=None, saliency_gate=0.4, saliency=saliency)
    salient, fg = saliency > 0.4, (plain != 0) & (plain != IGNORE_INDEX)
    expected = np.where((fg & salient) | ((plain == 0) & ~salient), plain, IGNORE_INDEX)
    np.testing.assert_array_equal(gated, expected)
    assert {0, 2, 4} <= set(np.unique(gated)) and (gated == IGNORE_INDEX).sum() > (plain == IGNORE_INDEX).sum()
    # an image without classes is background everywhere, salient or not
    none = confident_labels(image, cams[:0], [], crf=None, saliency_gate=0.4, saliency=saliency)
    assert (none == 0).all()
    for gate in (0, 1, 1.5):
        with pytest.raises(ValueError, match="affinity.saliency_gate"):
            confident_labels(image, cams, [2, 4], crf=None, saliency_gate=gate, saliency=saliency)
    with pytest.raises(ValueError, match="saliency map of shape"):
        confident_labels(image, cams, [2, 4], crf=None, saliency_gate=0.4, saliency=saliency[:5])

    # over a split: the saliency store is read per image, and the folder matches the rule
    dataset, ids, store = setup["dataset"], setup["ids"], setup["store"]
    maps = {i: rng.random(dataset.load_image(i).shape[:2]).astype(np.float32) for i in ids}
    with SaliencyWriter(tmp_path / "sal.h5", source="test") as writer:
        for image_id, sal in maps.items():
            writer.write(image_id, sal)
    record = make_affinity_labels(
        store, dataset.root, "val", tmp_path / "gated", crf=None, saliency_gate=0.5, saliency_h5=tmp_path / "sal.h5"
    )
    assert record["images"] == len(ids) and record["saliency_gate"] == 0.5
    with CAMReader(store) as reader:
        for image_id in ids:
            cams, class_ids = reader.read(image_id)
            stored = np.rint(maps[image_id] * 255).astype(np.uint8).astype(np.float32) / 255.0  # 8 bits stored
            want = confident_labels(
                dataset.load_image(image_id), cams, class_ids, crf=None, saliency_gate=0.5, saliency=stored
            )
            np.testing.assert_array_equal(read_png(tmp_path / "gated" / f"{image_id}.png")[2], want)
    with pytest.raises(ValueError, match="go together"):
        make_affinity_labels(store, dataset.root, "val", tmp_path / "no_store", crf=None, saliency_gate=0.5)
    assert not (tmp_path / "no_store").exists()


def test_training_lowers_the_loss_and_resumes_to_the_same_weights(setup, monkeypatch):
    rows = setup["out_history_csv"].read_text().splitlines()
    assert rows[0] == "epoch,loss,loss_bg_pos,loss_fg_pos,loss_neg,lr,seconds" and len(rows) == 3
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert losses[1] < losses[0] and np.isfinite(losses).all(), losses
    assert not (setup["checkpoint_dir"] / "last.pt").exists()
    model, meta = load_affinitynet(setup["out_model"])
    assert meta["arch"] == {"backbone": "efficientnet_lite0", "output_stride": 8} and meta["radius"] == 5
    assert meta["stride"] == 8 and meta["classes"] == list(setup["dataset"].classes) and not model.training
    assert model(torch.zeros(1, 3, 40, 56)).shape == (1, EMBED_CHANNELS, 5, 7)

    real_save = checkpoint_module.save_checkpoint

    def save_then_die(path, **kw):
        real_save(path, **kw)
        raise KeyboardInterrupt("killed")

    tmp = setup["tmp"]
    outputs = dict(out_model=tmp / "b.pt", out_history_csv=tmp / "b.csv", checkpoint_dir=tmp / "ck_b")
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_affinity(setup["dataset"].root, "val", aff_cfg(), label_dir=setup["labels"], **outputs)
    assert (tmp / "ck_b" / "last.pt").exists() and not (tmp / "b.pt").exists()
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
    train_affinity(setup["dataset"].root, "val", aff_cfg(), label_dir=setup["labels"], **outputs)
    resumed, _ = load_affinitynet(tmp / "b.pt")
    for (name, pa), pb in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=f"{name} differs after resume")
    cut = [[row.split(",")[:6] for row in (tmp / f"{n}.csv").read_text().splitlines()] for n in "ab"]
    assert cut[0] == cut[1]


def test_training_input_problems_name_the_file(setup, tmp_path):
    dataset, ids = setup["dataset"], setup["ids"]
    out = dict(out_model=tmp_path / "m.pt", out_history_csv=tmp_path / "m.csv", checkpoint_dir=tmp_path / "ck")
    fast = aff_cfg(weights="random", epochs=1, batch_size=10)
    partial = tmp_path / "partial"
    for image_id in ids[1:]:
        save_label_png(partial / f"{image_id}.png", dataset.load_mask(image_id), voc_palette())
    with pytest.raises(FileNotFoundError, match=f"{ids[0]}.png"):
        train_affinity(dataset.root, "val", fast, label_dir=partial, **out)
    save_label_png(partial / f"{ids[0]}.png", np.zeros((9, 9), np.uint8), voc_palette())
    with pytest.raises(ValueError, match=f"{ids[0]}.png: label size 9x9"):
        train_affinity(dataset.root, "val", fast, label_dir=partial, **out)
    with pytest.raises(ValueError, match="crop_size 44 must be a positive multiple of output_stride 8"):
        train_affinity(dataset.root, "val", dict(fast, crop_size=44), label_dir=partial, **out)
    with pytest.raises(ValueError, match="radius"):
        train_affinity(dataset.root, "val", dict(fast, radius=1), label_dir=partial, **out)
    assert not (tmp_path / "m.pt").exists()


def test_propagation_writes_a_cam_store_and_label_pngs(setup, tmp_path):
    dataset, ids, store, model_path = setup["dataset"], setup["ids"], setup["store"], setup["out_model"]
    result = propagate_split(store, dataset.root, "val", model_path, tmp_path / "rw1", tmp_path / "rw1.h5")
    assert result["images"] == len(ids) and (result["beta"], result["logt"], result["alpha"]) == (8, 8, 16)
    model, meta = load_affinitynet(model_path)
    with CAMReader(tmp_path / "rw1.h5") as walked, CAMReader(store) as source:
        assert walked.ids() == sorted(ids) and walked.attrs["refinement"] == "random_walk"
        assert walked.classes == source.classes and walked.attrs["radius"] == 5
        for image_id in ids:
            maps, class_ids = walked.read(image_id)
            cams, source_ids = source.read(image_id)
            assert class_ids == source_ids and maps.shape == cams.shape and 0 <= maps.min() and maps.max() <= 1
            mode, palette, labels = read_png(tmp_path / "rw1" / f"{image_id}.png")
            assert mode == "P" and set(np.unique(labels)) <= {0, *class_ids}
        # the same as walking one image by hand
        image = dataset.load_image(ids[0])
        emb = embed_image(model, image, torch.device("cpu"))
        by_hand, _ = propagate_cams(
            emb,
            torch.from_numpy(source.read(ids[0])[0]),
            source.read(ids[0])[1],
            stride=8,
            radius=5,
            beta=8,
            logt=8,
            alpha=16,
        )
        np.testing.assert_array_equal(read_png(tmp_path / "rw1" / f"{ids[0]}.png")[2], by_hand)
    table = sweep(tmp_path / "rw1.h5", dataset, ids, [0.1, 0.5])  # the CAM evaluation takes it as it takes CAMs
    assert len(table) == 2

    propagate_split(store, dataset.root, "val", model_path, tmp_path / "rw2", tmp_path / "rw2.h5", workers=2)
    with CAMReader(tmp_path / "rw1.h5") as one, CAMReader(tmp_path / "rw2.h5") as two:
        assert one.ids() == two.ids()
        for image_id in ids:
            np.testing.assert_array_equal(one.read(image_id)[0], two.read(image_id)[0])
            png = f"{image_id}.png"
            assert (tmp_path / "rw1" / png).read_bytes() == (tmp_path / "rw2" / png).read_bytes()
    assert not list(tmp_path.glob(".rw2*"))  # no part stores or temp folders left

    # the workflow's call: the store only, no PSA label PNGs
    propagate_split(store, dataset.root, "val", model_path, None, tmp_path / "rw3.h5", workers=2)
    with CAMReader(tmp_path / "rw1.h5") as one, CAMReader(tmp_path / "rw3.h5") as three:
        for image_id in ids:
            np.testing.assert_array_equal(one.read(image_id)[0], three.read(image_id)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rw1", "rw1.h5", "rw2", "rw2.h5", "rw3.h5"]


@pytest.mark.parametrize("workers", [1, 2])
def test_propagation_input_problems_name_the_file(setup, tmp_path, workers):
    dataset, ids, model_path = setup["dataset"], setup["ids"], setup["out_model"]
    small = write_store(tmp_path / "small.h5", dataset, ids, resize=ids[6])
    with pytest.raises(ValueError, match=rf"small.h5: image '{ids[6]}': CAMs are .*/{ids[6]}.jpg"):
        propagate_split(small, dataset.root, "val", model_path, tmp_path / "rw", tmp_path / "rw.h5", workers=workers)
    partial = write_store(tmp_path / "partial.h5", dataset, ids, skip=ids[2:3])
    with pytest.raises(ValueError, match=rf"partial.h5: no CAMs for 1 image\(s\).*'{ids[2]}'"):
        propagate_split(partial, dataset.root, "val", model_path, tmp_path / "rw", tmp_path / "rw.h5")
    with pytest.raises(ValueError, match="logt"):
        propagate_split(small, dataset.root, "val", model_path, tmp_path / "rw", tmp_path / "rw.h5", logt=2.5)
    assert not (tmp_path / "rw").exists() and not (tmp_path / "rw.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.h5", "small.h5"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP and the CUDA sparse walk run on CUDA only")
def test_amp_training_and_walk_on_cuda(setup, tmp_path):
    dataset, store = setup["dataset"], setup["store"]
    out = dict(out_model=tmp_path / "g.pt", out_history_csv=tmp_path / "g.csv", checkpoint_dir=tmp_path / "ck")
    summary = train_affinity(dataset.root, "val", aff_cfg(amp=True), label_dir=setup["labels"], **out, device="cuda")
    assert np.isfinite(summary["final_loss"])
    propagate_split(
        store, dataset.root, "val", tmp_path / "g.pt", tmp_path / "rw", tmp_path / "rw.h5", device="cuda", workers=2
    )
    with CAMReader(tmp_path / "rw.h5") as walked:
        assert walked.ids() == sorted(setup["ids"])


def test_affinitynet_learns_to_tell_the_pairs_of_sixteen_photos_apart(tmp_path, monkeypatch):
    """Sanity check of the network, the loss and the optimizer: trained on the ground-truth masks of 16 real
    photos (fixed inputs: no rescale, flip or jitter), it separates their pairs: same-label pairs' mean
    affinity above 0.9, different-label pairs' below 0.1."""
    photos = resized_subset(
        shared_dataset("voc_coseg"), tmp_path / "photos", split="train", count=16, long_side=OVERFIT["crop_size"]
    )
    outputs = dict(out_model=tmp_path / "m.pt", out_history_csv=tmp_path / "h.csv", checkpoint_dir=tmp_path / "ck")
    monkeypatch.setattr(engine_module, "save_epoch", lambda *a, **kw: None)  # 150 checkpoints: a third of the time
    train_affinity(
        photos.root, "train", aff_cfg(**OVERFIT), label_dir=photos.root / "SegmentationClass", threads=2, **outputs
    )
    model, meta = load_affinitynet(tmp_path / "m.pt")
    means = pair_separation(model, meta["radius"], photos, photos.ids("train"), "cpu")
    assert all(count > 100 for count in means["counts"])
    assert means["bg_pos"] > 0.9 and means["fg_pos"] > 0.9 and means["neg"] < 0.1, means
