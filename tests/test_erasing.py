"""Adversarial erasing (erased training images, merged rounds) and the classifier variant names."""

import numpy as np
import pytest

from wsss_core.cams.merge import merge_cam_stores
from wsss_core.cams.store import CAMReader, CAMStoreError, CAMWriter
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.train.classifier import training_images
from wsss_core.train.erasing import ErasedDataset
from wsss_core.plan import canonical, parse_variant, without

FILL = (124, 116, 104)


def write_store(path, dataset: VOCDataset, ids, region, value, skip=()):
    """A CAM store whose every map is 0.1 except ``value`` inside ``region`` (a function of (h, w) -> slices)."""
    with CAMWriter(path, classes=dataset.classes, scales=[1.0], stride=16, checkpoint_sha256=str(path)) as w:
        for image_id in ids:
            if image_id in skip:
                continue
            labels = dataset.labels(image_id)
            h, w_ = dataset.load_image(image_id).shape[:2]
            maps = np.full((len(labels), h, w_), 0.1, np.float32)
            if labels:
                maps[(0, *region(h, w_))] = value
            w.write(image_id, maps, labels)
    return path


def top_left(h, w):
    return slice(0, h // 2), slice(0, w // 2)


def bottom_right(h, w):
    return slice(h // 2, h), slice(w // 2, w)


@pytest.fixture()
def stores(tmp_path, tiny_demo):
    ds = VOCDataset(tiny_demo)
    ids = ds.ids("train")
    a = write_store(tmp_path / "a.h5", ds, ids, top_left, 0.9)
    b = write_store(tmp_path / "b.h5", ds, ids, bottom_right, 0.5)  # exactly the threshold: not mined
    c = write_store(tmp_path / "c.h5", ds, ids, bottom_right, 0.7)
    return ds, ids, a, b, c


def test_regions_above_the_threshold_of_every_earlier_round_are_painted_over(stores):
    ds, ids, a, b, c = stores
    image_id = next(i for i in ids if ds.labels(i))
    original = ds.load_image(image_id)
    h, w = original.shape[:2]
    erased = ErasedDataset(ds.root, [a, b], threshold=0.5, fill=FILL).load_image(image_id)
    mask = np.zeros((h, w), bool)
    mask[top_left(h, w)] = True
    assert (erased[mask] == FILL).all() and np.array_equal(erased[~mask], original[~mask])
    erased = ErasedDataset(ds.root, [a, c], threshold=0.5, fill=FILL).load_image(image_id)
    mask[bottom_right(h, w)] = True  # the union of both rounds' regions
    assert (erased[mask] == FILL).all() and np.array_equal(erased[~mask], original[~mask])
    unlabelled = [i for i in ids if not ds.labels(i)]
    for image_id in unlabelled[:1]:  # nothing mined, nothing erased
        assert np.array_equal(ErasedDataset(ds.root, [a], 0.5, FILL).load_image(image_id), ds.load_image(image_id))


def test_stores_must_cover_the_split_and_erasing_needs_them(tmp_path, stores, tiny_demo):
    ds, ids, a, _, _ = stores
    partial = write_store(tmp_path / "partial.h5", ds, ids, top_left, 0.9, skip=ids[:2])
    with pytest.raises(CAMStoreError, match="partial.h5: no CAMs for 2 image"):
        ErasedDataset(ds.root, [a, partial], 0.5, FILL).check_stores(ids)
    cfg = {"addons": ["puzzle", "erasing"], "erasing": {"threshold": 0.5}}
    with pytest.raises(ValueError, match="needed exactly when classifier add-ons include erasing"):
        training_images(ds, "train", cfg, [], (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="needed exactly when"):
        training_images(ds, "train", {"addons": ["puzzle"]}, [a], (0.5, 0.5, 0.5))
    erased = training_images(ds, "train", cfg, [a], (0.5, 0.5, 0.5))
    assert isinstance(erased, ErasedDataset) and erased.fill.tolist() == [128, 128, 128]
    with pytest.raises(CAMStoreError, match="partial.h5"):
        training_images(ds, "train", cfg, [partial], (0.5, 0.5, 0.5))


def test_merged_rounds_are_the_pixelwise_maximum(tmp_path, stores):
    ds, ids, a, b, c = stores
    out = tmp_path / "merged.h5"
    assert merge_cam_stores([a, c], ds.root, "train", out) == {"images": len(ids), "stores": 2}
    with CAMReader(out) as merged, CAMReader(a) as ra, CAMReader(c) as rc:
        assert merged.ids() == sorted(ids) and merged.attrs["merged_from"] == [str(a), str(c)]
        for image_id in ids:
            m, labels = merged.read(image_id)
            assert labels == ra.read(image_id)[1]
            np.testing.assert_array_equal(m, np.maximum(ra.read(image_id)[0], rc.read(image_id)[0]))


def test_geometric_mean_keeps_a_class_where_both_stores_agree_scaled_to_a_peak_of_one(tmp_path, stores):
    ds, ids, a, b, _ = stores
    out = tmp_path / "combined.h5"
    assert merge_cam_stores([a, b], ds.root, "train", out, how="geometric_mean")["stores"] == 2
    with CAMReader(out) as combined, CAMReader(a) as ra, CAMReader(b) as rb:
        assert combined.attrs["merged_by"] == "geometric_mean"
        for image_id in ids:
            m, labels = combined.read(image_id)
            (ma, la), (mb, _) = ra.read(image_id), rb.read(image_id)
            assert labels == la
            mean = np.sqrt(ma.astype(np.float64) * mb)
            peaks = mean.max(axis=(1, 2), keepdims=True)
            expected = np.where(peaks > 0, mean / np.maximum(peaks, 1e-12), 0.0)
            np.testing.assert_allclose(m, expected, atol=2e-3)
            if labels:  # a's 0.9 top left x b's 0.1 is the peak; b's 0.5 bottom right x a's 0.1 scores below it
                h, w = m.shape[1:]
                peak = np.sqrt(0.9 * 0.1)
                np.testing.assert_allclose(m[(0, *top_left(h, w))], 1.0, atol=2e-3)
                np.testing.assert_allclose(m[(0, *bottom_right(h, w))], np.sqrt(0.5 * 0.1) / peak, atol=2e-3)
                np.testing.assert_allclose(m[0, : h // 2, w // 2 :], 0.1 / peak, atol=2e-3)
    with pytest.raises(ValueError, match="how must be one of"):
        merge_cam_stores([a, b], ds.root, "train", tmp_path / "x.h5", how="mean")


def test_merging_stores_of_different_images_fails_naming_the_file_and_writes_nothing(tmp_path, stores, tiny_demo):
    ds, ids, a, _, _ = stores
    odd = tmp_path / "odd.h5"
    with CAMWriter(odd, classes=ds.classes, scales=[1.0], stride=16, checkpoint_sha256="x") as w:
        for image_id in ids:
            h, w_ = ds.load_image(image_id).shape[:2]
            w.write(image_id, np.zeros((1, h, w_), np.float32), [1 if 1 not in ds.labels(image_id) else 2])
    out = tmp_path / "merged.h5"
    with pytest.raises(CAMStoreError, match="odd.h5: image"):
        merge_cam_stores([a, odd], ds.root, "train", out)
    assert not out.exists() and not list(tmp_path.glob("merged*"))


def test_variant_names():
    assert parse_variant("cam") == ("cam", ())
    assert parse_variant("coattention+erasing+puzzle") == ("coattention", ("puzzle", "erasing"))
    assert canonical("cam+erasing+binomial+puzzle") == "cam+puzzle+binomial+erasing"
    assert without("cam+puzzle+erasing", "erasing") == "cam+puzzle"
    with pytest.raises(ValueError, match=r"config key classifier.compare\[1\]: 'vgg\+puzzle' must start with a method"):
        parse_variant("vgg+puzzle", "classifier.compare[1]")
    with pytest.raises(ValueError, match=r"unknown add-on\(s\) \['mixup'\]"):
        parse_variant("cam+mixup")
    with pytest.raises(ValueError, match="names an add-on twice"):
        parse_variant("cam+puzzle+puzzle")
