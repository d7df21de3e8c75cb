"""The synthetic demo dataset: a valid VOC layout that really poses the WSSS problem."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_core.data import demo
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset, voc_palette

SPLITS = ["train", "train_aug", "val"]
N_CLASSES = demo.TINY["n_classes"]
DRAW = (demo.TINY["image_size"], N_CLASSES, demo.TINY["max_objects"])  # render()'s drawing arguments


@pytest.fixture(scope="module")
def samples() -> list[demo.Sample]:
    """150 TINY-sized images with the generator's own ground truth (for statistics)."""
    return [demo.render(demo.TINY["seed"], i, *DRAW) for i in range(150)]


@pytest.fixture(scope="module")
def objects(samples) -> list[dict]:
    """Every visible object: class, pixel counts, mean colours of its body and of its part."""
    out = []
    for s in samples:
        for k, cls in enumerate(s.object_classes, 1):
            obj = s.objects == k
            body, part = obj & ~s.part, obj & s.part
            out.append(
                dict(
                    cls=cls,
                    area=int(obj.sum()),
                    part_area=int(part.sum()),
                    body_rgb=s.image[body].mean(0),
                    part_rgb=s.image[part].mean(0),
                )
            )
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ layout and labels
def test_tiny_demo_is_a_valid_voc_dataset(tiny_demo):
    ds = VOCDataset(tiny_demo)
    assert ds.validate(SPLITS) == []
    assert ds.classes == tuple(demo.class_names(N_CLASSES)) and ds.classes[0] == "background"
    assert len(set(ds.classes)) == N_CLASSES + 1
    assert ds.label_source == "cls_labels.json"
    train, val = ds.ids("train"), ds.ids("val")
    assert ds.ids("train_aug") == train
    assert len(train) + len(val) == demo.TINY["n_images"] and not set(train) & set(val)
    assert len(val) == round(demo.TINY["n_images"] * demo.TINY["val_fraction"])
    with Image.open(ds.mask_path(val[0])) as png:
        assert png.mode == "P" and png.getpalette()[: 3 * 256] == voc_palette()
    assert ds.load_image(val[0]).shape == (64, 64, 3)


def test_labels_are_exactly_the_classes_in_each_mask(tiny_demo):
    ds = VOCDataset(tiny_demo)
    labels = json.loads((tiny_demo / "cls_labels.json").read_text())
    assert sorted(labels) == sorted(ds.ids("train") + ds.ids("val"))
    for image_id, image_labels in labels.items():
        mask = ds.load_mask(image_id)
        assert image_labels, f"{image_id} has no label"
        assert image_labels == sorted(set(np.unique(mask).tolist()) - {0, IGNORE_INDEX}), image_id


def test_written_files_are_what_render_draws(tiny_demo):
    ds = VOCDataset(tiny_demo)
    for i in (0, 7, 31):
        s = demo.render(demo.TINY["seed"], i, *DRAW)
        image_id = f"demo_{i:06d}"
        assert np.array_equal(ds.load_mask(image_id), s.mask)
        assert ds.labels(image_id) == s.labels
        jpeg_error = np.abs(ds.load_image(image_id).astype(int) - s.image).mean()
        assert jpeg_error < 4, jpeg_error  # quality-95 JPEG of the same picture


def test_masks_have_void_borders_a_couple_of_pixels_wide(samples):
    for s in samples:
        void, objects = s.mask == IGNORE_INDEX, (s.mask != 0) & (s.mask != IGNORE_INDEX)
        assert void.any()
        # a band on both sides of each outline: about as many void pixels as 2 x perimeter
        assert 0.05 < void.sum() / (void.sum() + objects.sum()) < 0.9
        # void lies only on object outlines: never surrounded by background alone
        grown = np.zeros_like(objects)
        grown[1:] |= objects[:-1] | void[:-1]
        grown[:-1] |= objects[1:] | void[1:]
        grown[:, 1:] |= objects[:, :-1] | void[:, :-1]
        grown[:, :-1] |= objects[:, 1:] | void[:, 1:]
        assert (grown[void]).all()


def test_every_labelled_class_shows_its_marker(samples):
    """Hidden or marker-less objects are dropped from image, mask and labels alike."""
    for s in samples:
        assert s.labels == tuple(sorted(set(s.object_classes)))
        for k, cls in enumerate(s.object_classes, 1):
            assert (s.part & (s.objects == k)).sum() >= 1, (cls, s.labels)


# ------------------------------------------------------------------ the WSSS difficulty
def test_images_are_multi_label_with_non_uniform_co_occurrence(samples):
    n_labels = Counter(len(s.labels) for s in samples)
    assert n_labels[1] > 0 and n_labels[2] + n_labels[3] > 0.25 * len(samples), n_labels
    assert set(n_labels) <= {1, 2, 3}
    per_class = Counter(c for s in samples for c in s.labels)
    assert sorted(per_class) == list(range(1, N_CLASSES + 1))
    assert min(per_class.values()) > 0.5 * max(per_class.values()), per_class
    pairs = Counter(p for s in samples for p in itertools.combinations(s.labels, 2))
    partners = [pairs[(1, 2)], pairs[(3, 4)]]
    others = [pairs[p] for p in itertools.combinations(range(1, N_CLASSES + 1), 2) if p not in {(1, 2), (3, 4)}]
    assert min(partners) > 2 * np.mean(others), pairs


def test_objects_vary_in_size_and_images_in_count(samples, objects):
    areas = np.array([o["area"] for o in objects]) / 64**2
    assert np.quantile(areas, 0.9) > 3 * np.quantile(areas, 0.1), np.quantile(areas, [0.1, 0.9])
    assert areas.max() > 0.1
    assert max(len(s.object_classes) for s in samples) >= 3


def saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(float)
    return (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1)


def test_distractors_are_background_that_looks_like_bodies_not_parts(samples):
    with_distractor = [s for s in samples if s.distractor.any()]
    assert len(with_distractor) > 0.6 * len(samples)
    distractor_px, body_px, part_px = [], [], []
    for s in with_distractor:
        assert set(np.unique(s.mask[s.distractor]).tolist()) <= {0, IGNORE_INDEX}
        assert not (s.distractor & s.part).any()
        distractor_px.append(s.image[s.distractor])
        body_px.append(s.image[(s.objects > 0) & ~s.part])
        part_px.append(s.image[s.part])
    distractor_sat, body_sat, part_sat = (saturation(np.concatenate(p)) for p in (distractor_px, body_px, part_px))
    # nothing but a marker is saturated: distractors are drawn like bodies, never like parts
    assert abs(np.median(distractor_sat) - np.median(body_sat)) < 0.1
    assert np.quantile(distractor_sat, 0.99) < np.quantile(part_sat, 0.1)


def test_the_part_is_small(objects):
    for cls in range(1, N_CLASSES + 1):
        fractions = [o["part_area"] / o["area"] for o in objects if o["cls"] == cls]
        assert 0.03 < np.median(fractions) < 0.15, (cls, np.median(fractions))
        assert np.quantile(fractions, 0.9) < 0.25, (cls, np.quantile(fractions, 0.9))


def nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out accuracy of classifying each object by the nearest class-mean colour."""
    hits = 0
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        centroids = {c: x[rest & (y == c)].mean(0) for c in np.unique(y)}
        hits += min(centroids, key=lambda c: np.linalg.norm(x[i] - centroids[c])) == y[i]
    return hits / len(x)


def spread_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """Spread of the class-mean colours over the mean within-class spread (RMS, RGB)."""
    classes = np.unique(y)
    between = np.sqrt(np.array([x[y == c].mean(0) for c in classes]).var(0).sum())
    within = np.sqrt(np.mean([x[y == c].var(0).sum() for c in classes]))
    return between / within


def test_only_the_part_identifies_the_class(objects):
    """Bodies share one appearance for all classes; only the small part separates them."""
    y = np.array([o["cls"] for o in objects])
    body = np.array([o["body_rgb"] for o in objects])
    part = np.array([o["part_rgb"] for o in objects])
    chance = 1 / N_CLASSES
    assert nearest_centroid_accuracy(body, y) < chance + 0.15
    assert spread_ratio(body, y) < 0.3
    assert nearest_centroid_accuracy(part, y) > 0.95
    assert spread_ratio(part, y) > 3


# ------------------------------------------------------------------ determinism and atomicity
def test_same_seed_same_bytes_any_workers_and_other_seed_differs(tmp_path, tiny_demo):
    small = dict(demo.TINY, n_images=10)
    demo.generate(tmp_path / "a", **small)
    demo.generate(tmp_path / "b", **small, workers=2)
    demo.generate(tmp_path / "c", **dict(small, seed=1))
    a, b, c = (tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if k.startswith("JPEGImages") and a[k] != c[k]]
    assert len(differing) == 10
    # image i depends on (seed, i) only: a smaller set starts like a larger one
    full = tree_bytes(tiny_demo)
    assert all(full[k] == a[k] for k in a if k.startswith(("JPEGImages", "SegmentationClass")))


def test_summary_reports_counts(tmp_path):
    summary = demo.generate(tmp_path / "d", **dict(demo.TINY, n_images=10))
    assert summary["splits"] == {"train": 8, "train_aug": 8, "val": 2}
    assert sum(summary["class_images"].values()) == round(summary["mean_labels_per_image"] * 10)
    assert list(summary["class_images"]) == demo.class_names(N_CLASSES)[1:]
    assert summary["seconds"] > 0


@pytest.mark.parametrize("n_classes, max_objects, image_size", [(1, 1, 32), (20, 10, 96)])
def test_extreme_arguments_still_give_valid_datasets(tmp_path, n_classes, max_objects, image_size):
    root = tmp_path / "x"
    demo.generate(root, n_images=12, image_size=image_size, n_classes=n_classes, max_objects=max_objects)
    ds = VOCDataset(root)
    assert ds.validate(SPLITS) == [] and ds.num_classes == n_classes + 1
    assert len(set(demo.class_names(20))) == 21


@pytest.mark.parametrize(
    "name, value",
    [
        ("n_images", 1),
        ("n_images", 2.5),
        ("image_size", 16),
        ("image_size", True),
        ("n_classes", 0),
        ("n_classes", 21),
        ("seed", -1),
        ("val_fraction", 0),
        ("val_fraction", 1.0),
        ("val_fraction", "0.2"),
        ("max_objects", 0),
        ("workers", 0),
    ],
)
def test_bad_arguments_are_rejected_by_name(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        demo.generate(tmp_path / "bad", **dict(demo.TINY, **{name: value}))
    assert not (tmp_path / "bad").exists()


def test_a_failure_midway_leaves_no_dataset_and_keeps_an_old_one(tmp_path, monkeypatch):
    small = dict(demo.TINY, n_images=10)
    real_save, calls = demo.save_label_png, []

    def failing_save(path, labels, palette):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full")
        real_save(path, labels, palette)

    monkeypatch.setattr(demo, "save_label_png", failing_save)
    with pytest.raises(OSError, match="disk full"):
        demo.generate(tmp_path / "new", **small)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(demo, "save_label_png", real_save)
    demo.generate(tmp_path / "old", **small)
    before = tree_bytes(tmp_path / "old")
    calls.clear()
    monkeypatch.setattr(demo, "save_label_png", failing_save)
    with pytest.raises(OSError):
        demo.generate(tmp_path / "old", **dict(small, seed=3))
    assert tree_bytes(tmp_path / "old") == before
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
