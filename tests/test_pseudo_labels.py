"""CAMs -> pseudo labels: the three-zone rule exactly, CRF value range, worker invariance, checks, atomicity."""

import numpy as np
import pytest
from PIL import Image

import wsss_core.pseudo.labels as pseudo
from wsss_core.cams.store import CAMReader, CAMWriter
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset, voc_palette
from wsss_core.pseudo.labels import make_pseudo_labels, pseudo_label

CRF = dict(iterations=10, gt_prob=0.7, pos_xy_std=3, pos_w=3, bi_xy_std=50, bi_rgb_std=5, bi_w=10)
ZONES = dict(threshold=0.3, fg_margin=0.2, bg_margin=0.1)  # foreground above 0.5, background at or below 0.2
# CAM values well away from both cut points (float16 storage moves them by < 1e-3).
VALUES = np.array([0.0, 0.05, 0.1, 0.15, 0.25, 0.3, 0.35, 0.45, 0.55, 0.6, 0.75, 0.9, 1.0])


def expected_zones(cams, class_ids, fg_cut=0.5, bg_cut=0.2):
    """The rule spelled out per pixel: top class above fg_cut, 0 at or below bg_cut, 255 between."""
    out = np.empty(cams.shape[1:], np.uint8)
    for y, x in np.ndindex(*out.shape):
        v = cams[:, y, x]
        top = v.max() if len(v) else 0.0
        out[y, x] = class_ids[int(v.argmax())] if top > fg_cut else (0 if top <= bg_cut else IGNORE_INDEX)
    return out


def test_three_zones_exactly_without_crf():
    rng = np.random.default_rng(0)
    class_ids = [2, 4]
    cams = rng.choice(VALUES, (2, 15, 17))
    image = rng.integers(0, 256, (15, 17, 3), dtype=np.uint8)
    got = pseudo_label(image, cams, class_ids, **ZONES, crf=None)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected_zones(cams, class_ids))
    assert {0, 2, 4, IGNORE_INDEX} <= set(np.unique(got))  # every zone occurs, so the check is not vacuous


def test_zone_edges_and_empty_labels():
    image = np.zeros((1, 5, 3), np.uint8)
    cams = np.array([[[0.5, 0.5001, 0.2, 0.2001, 0.05]]])  # > is strict at both cut points
    got = pseudo_label(image, cams, [1], threshold=0.3, fg_margin=0.2, bg_margin=0.1, crf=None)
    np.testing.assert_array_equal(got, [[IGNORE_INDEX, 1, 0, IGNORE_INDEX, 0]])
    # bg_margin larger than the threshold: the lenient cut stops at 0, so only a zero CAM is sure background.
    low = np.array([[[0.0, 0.01, 0.1, 0.2]]])
    got = pseudo_label(image[:, :4], low, [1], threshold=0.1, fg_margin=0.0, bg_margin=0.5, crf=None)
    np.testing.assert_array_equal(got, [[0, IGNORE_INDEX, IGNORE_INDEX, 1]])
    empty = pseudo_label(np.zeros((3, 4, 3), np.uint8), np.zeros((0, 3, 4)), [], **ZONES, crf=CRF)
    np.testing.assert_array_equal(empty, np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="fg_margin"):
        pseudo_label(image, cams, [1], threshold=0.3, fg_margin=-0.1, bg_margin=0.1, crf=None)
    with pytest.raises(ValueError, match="image size"):
        pseudo_label(np.zeros((2, 5, 3), np.uint8), cams, [1], **ZONES, crf=None)


def test_crf_keeps_values_in_the_image_labels():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:40, :48]
    blob = np.exp(-((yy - 20) ** 2 + (xx - 16) ** 2) / 120.0)
    cams = np.stack([blob, np.roll(blob, 20, axis=1)])
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image[cams.max(0) > 0.4] = (200, 40, 40)
    got = pseudo_label(image, cams, [1, 3], **ZONES, crf=CRF)
    assert set(np.unique(got)) <= {0, 1, 3, IGNORE_INDEX}
    assert {0, 1, 3} <= set(np.unique(got))


def fake_cams(mask, class_ids, rng):
    """CAM-like maps from a GT mask: high on the class, blurred outwards, plus noise; in [0, 1]."""
    from scipy import ndimage

    maps = []
    for c in class_ids:
        m = ndimage.gaussian_filter((mask == c).astype(np.float64), 3)
        m = m / max(m.max(), 1e-6) + rng.normal(0, 0.05, m.shape)
        maps.append(np.clip(m, 0, 1))
    return np.stack(maps) if maps else np.zeros((0, *mask.shape))


def write_store(path, dataset, ids, seed=0, skip=(), resize=None):
    rng = np.random.default_rng(seed)
    with CAMWriter(path, classes=dataset.classes, scales=[1.0], stride=16, checkpoint_sha256="0" * 64) as writer:
        for image_id in ids:
            if image_id in skip:
                continue
            mask, labels = dataset.load_mask(image_id), dataset.labels(image_id)
            cams = fake_cams(mask, labels, rng)
            if image_id == resize:
                cams = cams[:, :-2]
            writer.write(image_id, cams, labels)
    return path


@pytest.fixture
def demo(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    ids = dataset.ids("val")
    return dataset, ids, write_store(tmp_path / "val.h5", dataset, ids)


def read_png(path):
    with Image.open(path) as img:
        return img.mode, img.getpalette(), np.asarray(img)


def test_folder_matches_the_rule_and_uses_the_voc_palette(demo, tmp_path):
    dataset, ids, store = demo
    out = tmp_path / "pseudo"
    record = make_pseudo_labels(store, dataset.root, "val", out, **ZONES, crf=None)
    assert record["images"] == len(ids) and record["threshold"] == 0.3 and record["seconds"] >= 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.png" for i in ids)
    seen = set()
    with CAMReader(store) as reader:
        for image_id in ids:
            mode, palette, labels = read_png(out / f"{image_id}.png")
            assert mode == "P" and palette == voc_palette()
            cams, class_ids = reader.read(image_id)
            np.testing.assert_array_equal(labels, expected_zones(cams.astype(np.float64), class_ids))
            seen |= set(np.unique(labels).tolist())
    assert {0, IGNORE_INDEX} < seen and len(seen) > 3


def test_crf_run_and_workers_give_identical_folders(demo, tmp_path):
    dataset, ids, store = demo
    folders = {}
    for workers in (1, 2):
        folders[workers] = tmp_path / f"w{workers}"
        make_pseudo_labels(store, dataset.root, "val", folders[workers], **ZONES, crf=CRF, workers=workers)
    for image_id in ids:
        one = read_png(folders[1] / f"{image_id}.png")[2]
        np.testing.assert_array_equal(one, read_png(folders[2] / f"{image_id}.png")[2])
        assert set(np.unique(one)) <= {0, IGNORE_INDEX, *dataset.labels(image_id)}


def test_store_checks_name_the_file(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    ids = dataset.ids("val")
    out = tmp_path / "pseudo"
    partial_store = write_store(tmp_path / "partial.h5", dataset, ids, skip=ids[3:5])
    with pytest.raises(ValueError, match=rf"partial.h5: no CAMs for 2 image\(s\).*'{ids[3]}'"):
        make_pseudo_labels(partial_store, dataset.root, "val", out, **ZONES, crf=None)
    other = tmp_path / "other.h5"
    with CAMWriter(other, classes=["background", "x"], scales=[1.0], stride=16, checkpoint_sha256="0" * 64):
        pass
    with pytest.raises(ValueError, match="other.h5: CAMs of classes"):
        make_pseudo_labels(other, dataset.root, "val", out, **ZONES, crf=None)
    small = write_store(tmp_path / "small.h5", dataset, ids, resize=ids[6])
    with pytest.raises(ValueError, match=rf"small.h5: image '{ids[6]}': CAMs are .*/{ids[6]}.jpg"):
        make_pseudo_labels(small, dataset.root, "val", out, **ZONES, crf=None, workers=2)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.h5", "partial.h5", "small.h5"]


@pytest.mark.parametrize("workers", [1, 2])
def test_crash_mid_way_keeps_the_old_folder(demo, tmp_path, monkeypatch, workers):
    dataset, ids, store = demo
    out = tmp_path / "pseudo"
    make_pseudo_labels(store, dataset.root, "val", out, **ZONES, crf=None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = pseudo.pseudo_label, []

    def crash_on_fourth(*args, **kwargs):
        calls.append(1)  # per process: with 2 workers over 10 images one of them reaches a 4th image
        if len(calls) == 4:
            raise RuntimeError("killed mid-way")
        return real(*args, **kwargs)

    monkeypatch.setattr(pseudo, "pseudo_label", crash_on_fourth)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        make_pseudo_labels(
            store, dataset.root, "val", out, threshold=0.1, fg_margin=0.0, bg_margin=0.0, crf=None, workers=workers
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudo", "val.h5"]  # no temp folder left behind
