"""CAMs + saliency -> pseudo labels (MCIS recipe): each rule on hand-made pixels, class ids, the dataset loop."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from test_pseudo_labels import CRF, write_store
from wsss_core.cams.store import CAMReader
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.pseudo.saliency_labels import (
    make_saliency_only_labels,
    make_saliency_pseudo_labels,
    saliency_only_label,
    saliency_pseudo_label,
)
from wsss_core.pseudo.saliency_store import SaliencyReader, SaliencyWriter

V = IGNORE_INDEX


def label(cams, class_ids, sal, **settings):
    sal = np.asarray(sal, np.float64)
    image = np.zeros((*sal.shape, 3), np.uint8)
    return saliency_pseudo_label(image, np.asarray(cams, np.float64), class_ids, sal, **settings)


def test_each_rule_on_one_row_of_pixels():
    # Values are binary fractions (0.25, 0.875, ...) so 1 - saliency ties exactly where intended.
    a = [1.0, 0.875, 0.125, 0.0, 0.9375, 0.5, 0.3, 0.0, 0.75, 0.0]
    b = [0.0, 0.75, 0.125, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    sal = [0.875, 0.875, 0.875, 0.125, 0.125, 0.125, 0.9375, 0.625, 0.25, 0.5]
    want = [
        3,  # salient, class above the cut
        V,  # two classes above the cut: conflict, however salient
        V,  # salient but no class above the cut: an object the CAMs missed
        0,  # neither salient nor any CAM: background
        3,  # not salient, but the class score 0.9375 beats background 1 - 0.125
        0,  # not salient, class score 0.5 loses to background 0.875
        V,  # a CAM exactly at the cut is not above it: background, but salient -> void
        7,  # the other class at its peak
        0,  # class score 0.75 ties background 1 - 0.25: background wins ties
        0,  # saliency exactly at sal_threshold is not salient
    ]
    settings = dict(cam_threshold=0.3, sal_threshold=0.5, min_fg_share=0.0)
    np.testing.assert_array_equal(label([[a], [b]], [3, 7], [sal], **settings), [want])
    # Each class is normalised by its own peak: a weak CAM (peak 0.25) is as good as a strong one.
    np.testing.assert_array_equal(label([[a], np.multiply([b], 0.25)], [3, 7], [sal], **settings), [want])


def test_images_with_too_little_foreground_are_void():
    cams = np.zeros((1, 10, 10))
    cams[0, 0, 0] = 1.0
    cams[0, 5, 5:7] = 0.75
    sal = np.zeros((10, 10))
    sal[0, 0] = 1.0
    sal[5, 5:7] = 1.0
    conflict = np.zeros((2, 10, 10))
    conflict[:, 5, 5:7] = 1.0  # voided pixels are no foreground: one class pixel of 100 remains
    kept = label(cams, [4], sal, min_fg_share=0.03)  # 3 of 100 pixels are foreground
    assert (kept == 4).sum() == 3 and (kept == 0).sum() == 97
    assert (label(cams, [4], sal, min_fg_share=0.031) == V).all()
    two = np.concatenate([cams[:1], np.zeros((1, 10, 10))])
    two[:, 5, 5:7] = 1.0
    assert (label(two, [2, 4], sal, min_fg_share=0.02) == V).all()
    assert (label(two, [2, 4], sal, min_fg_share=0.01) == 2).sum() == 1


@pytest.mark.parametrize("class_ids", [[5], [2, 19], [20, 1, 4]])
def test_class_ids_follow_the_maps(class_ids):
    k = len(class_ids)
    cams = np.zeros((k, 6, 4 * k))
    sal = np.zeros((6, 4 * k))
    for i in range(k):  # map i is on in its own block of columns, which is salient
        cams[i, 1:5, 4 * i + 1 : 4 * i + 3] = 0.5 + 0.1 * i
        sal[1:5, 4 * i + 1 : 4 * i + 3] = 1.0
    got = label(cams, class_ids, sal)
    want = np.zeros((6, 4 * k), np.uint8)
    for i, c in enumerate(class_ids):
        want[1:5, 4 * i + 1 : 4 * i + 3] = c
    np.testing.assert_array_equal(got, want)


def test_no_labels_is_all_background_and_bad_inputs_are_named():
    sal = np.ones((3, 4))
    np.testing.assert_array_equal(label(np.zeros((0, 3, 4)), [], sal), np.zeros((3, 4), np.uint8))
    for setting in ("cam_threshold", "sal_threshold", "min_fg_share"):
        with pytest.raises(ValueError, match=setting):
            label(np.zeros((1, 3, 4)), [1], sal, **{setting: 1.5})
    with pytest.raises(ValueError, match="image size"):
        label(np.zeros((1, 3, 4)), [1], np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"saliency values .* \[0, 1\]"):
        label(np.zeros((1, 3, 4)), [1], sal * 255)


def test_crf_refines_only_within_the_image_labels_and_voids_after():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:40, :48]
    blob = np.exp(-((yy - 20) ** 2 + (xx - 16) ** 2) / 120.0)
    cams = np.stack([blob, np.roll(blob, 20, axis=1)])
    sal = np.clip(cams.max(0) * 1.5, 0, 1)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image[sal > 0.5] = (200, 40, 40)
    got = saliency_pseudo_label(image, cams, [1, 3], sal, crf=CRF)
    assert set(np.unique(got)) <= {0, 1, 3, V} and {0, 1, 3} <= set(np.unique(got))
    both = ((cams / cams.max((1, 2), keepdims=True)) > 0.3).sum(0) >= 2
    assert (got[both] == V).all() and not ((sal > 0.5) & (got == 0)).any()


def test_saliency_extent_labels_every_salient_pixel_by_its_best_class():
    a = [1.0, 0.5, 0.0, 0.25, 0.9, 0.0, 0.0]
    b = [0.0, 0.4, 0.5, 0.25, 0.0, 0.0, 1.0]
    sal = [0.875, 0.875, 0.875, 0.875, 0.25, 0.5, 0.125]
    settings = dict(extent="saliency", class_margin=0.2, min_fg_share=0.0)
    # b is normalised by its peak 1.0 (last pixel): 0.4 vs a's 0.5 is within the margin -> void.
    want = [3, V, 7, V, 0, 0, 0]  # not salient -> background, whatever the CAMs say
    np.testing.assert_array_equal(label([[a], [b]], [3, 7], [sal], **settings), [want])
    # One label: every salient pixel is that class, even where its CAM is 0 (the saliency_only labels).
    one = label([[a]], [3], [sal], **settings)
    np.testing.assert_array_equal(one, [[3, 3, 3, 3, 0, 0, 0]])
    image = np.zeros((1, 7, 3), np.uint8)
    np.testing.assert_array_equal(one, saliency_only_label(image, np.zeros((0, 1, 7)), [3], np.asarray([sal])))
    # Too little salient foreground: all void (the MCIS recipe's last rule).
    assert (label([[a]], [3], [[0.0] * 6 + [1.0]], extent="saliency", min_fg_share=0.2) == V).all()
    for setting, value in (("extent", "cam"), ("class_margin", -0.1)):
        with pytest.raises(ValueError, match=setting):
            label([[a]], [3], [sal], **{setting: value})


def test_walked_maps_trim_the_class_scores():
    # Pixel 1: both CAMs above the cut (a conflict); the walk of class 5 does not reach it, so class 3 keeps it.
    # Pixel 2: class 3's CAM is strong but its walk fades, 0.9 * 0.25 -> 0.225, under the cut: void, as a
    # salient pixel no class reaches.
    cams = [[[1.0, 0.9, 0.9]], [[0.0, 0.8, 0.0]]]
    walked = np.asarray([[[1.0, 1.0, 0.25]], [[1.0, 0.0, 0.0]]])
    sal = [[0.875, 0.875, 0.875]]
    assert label(cams, [3, 5], sal).tolist() == [[3, V, 3]]
    assert label(cams, [3, 5], sal, walked=walked).tolist() == [[3, 3, V]]
    # The product is max-normalised again: a walk that is uniform leaves the labels as they are.
    assert label(cams, [3, 5], sal, walked=np.full((2, 1, 3), 0.5)).tolist() == [[3, V, 3]]
    with pytest.raises(ValueError, match=r"walked maps \(1, 1, 3\) but CAMs \(2, 1, 3\)"):
        label(cams, [3, 5], sal, walked=walked[:1])


def saliency_from_masks(path, dataset, ids, resize=None):
    """Saliency-like maps from the GT masks: blurred object masks, in [0, 1]."""
    with SaliencyWriter(path, source="test") as writer:
        for image_id in ids:
            fg = (dataset.load_mask(image_id) > 0).astype(np.float64)
            sal = np.clip(ndimage.gaussian_filter(fg, 2) * 1.2, 0, 1)
            writer.write(image_id, sal[:, :-1] if image_id == resize else sal)
    return path


def test_dataset_loop(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    ids = dataset.ids("val")
    cams = write_store(tmp_path / "cams.h5", dataset, ids)
    sal = saliency_from_masks(tmp_path / "sal.h5", dataset, ids)
    folders = {w: tmp_path / f"w{w}" for w in (1, 2)}
    for workers, out in folders.items():
        record = make_saliency_pseudo_labels(cams, sal, dataset.root, "val", out, crf=None, workers=workers)
        assert record["images"] == len(ids) and record["cam_threshold"] == 0.3 and record["crf"] is False
        assert 0 <= record["all_void_images"] < len(ids)
    seen = set()
    with CAMReader(cams) as cam_reader, SaliencyReader(sal) as sal_reader:
        for image_id in ids:
            with Image.open(folders[1] / f"{image_id}.png") as png:
                assert png.mode == "P"
                got = np.asarray(png)
            with Image.open(folders[2] / f"{image_id}.png") as png:
                np.testing.assert_array_equal(np.asarray(png), got)
            maps, class_ids = cam_reader.read(image_id)
            image = dataset.load_image(image_id)
            np.testing.assert_array_equal(got, saliency_pseudo_label(image, maps, class_ids, sal_reader.read(image_id)))
            seen |= set(np.unique(got).tolist())
    assert {0, V} < seen and len(seen) > 3


def test_dataset_loop_with_walked_maps(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    ids = dataset.ids("val")
    cams = write_store(tmp_path / "cams.h5", dataset, ids)
    walked = write_store(tmp_path / "walked.h5", dataset, ids, seed=1)
    sal = saliency_from_masks(tmp_path / "sal.h5", dataset, ids)
    record = make_saliency_pseudo_labels(cams, sal, dataset.root, "val", tmp_path / "out", walked_h5=walked, workers=2)
    assert record["images"] == len(ids) and record["walked"] is True
    differs = 0
    with CAMReader(cams) as cam_reader, CAMReader(walked) as walked_reader, SaliencyReader(sal) as sal_reader:
        for image_id in ids:
            with Image.open(tmp_path / "out" / f"{image_id}.png") as png:
                got = np.asarray(png)
            maps, class_ids = cam_reader.read(image_id)
            image, saliency = dataset.load_image(image_id), sal_reader.read(image_id)
            want = saliency_pseudo_label(image, maps, class_ids, saliency, walked=walked_reader.read(image_id)[0])
            np.testing.assert_array_equal(got, want)
            differs += not np.array_equal(got, saliency_pseudo_label(image, maps, class_ids, saliency))
    assert differs > 0  # the walked maps changed some images' labels
    short = write_store(tmp_path / "short.h5", dataset, ids, skip=ids[-1:])
    with pytest.raises(ValueError, match=rf"short.h5.*'{ids[-1]}'"):
        make_saliency_pseudo_labels(cams, sal, dataset.root, "val", tmp_path / "bad", walked_h5=short)
    assert not (tmp_path / "bad").exists()


def test_dataset_checks_name_the_saliency_file(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    ids = dataset.ids("val")
    cams = write_store(tmp_path / "cams.h5", dataset, ids)
    out = tmp_path / "pseudo"
    partial = saliency_from_masks(tmp_path / "partial.h5", dataset, ids[:-2])
    with pytest.raises(ValueError, match=rf"partial.h5: no saliency map for 2 image\(s\).*'{ids[-1]}'"):
        make_saliency_pseudo_labels(cams, partial, dataset.root, "val", out)
    narrow = saliency_from_masks(tmp_path / "narrow.h5", dataset, ids, resize=ids[4])
    with pytest.raises(ValueError, match=rf"narrow.h5: image '{ids[4]}': the saliency map is .*/{ids[4]}.jpg"):
        make_saliency_pseudo_labels(cams, narrow, dataset.root, "val", out, workers=2)
    with pytest.raises(ValueError, match="sal_threshold"):
        make_saliency_pseudo_labels(cams, narrow, dataset.root, "val", out, sal_threshold=-0.1)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cams.h5", "narrow.h5", "partial.h5"]


def test_saliency_only_paints_the_one_label_and_voids_several():
    image, sal = np.zeros((1, 4, 3), np.uint8), np.array([[0.9, 0.6, 0.5, 0.1]])
    none = np.zeros((0, 1, 4))
    assert saliency_only_label(image, none, [7], sal).tolist() == [[7, 7, 0, 0]]
    assert saliency_only_label(image, none, [2, 7], sal).tolist() == [[V, V, 0, 0]]
    assert saliency_only_label(image, none, [], sal).tolist() == [[0, 0, 0, 0]]
    assert saliency_only_label(image, none, [7], sal, sal_threshold=0.55).tolist() == [[7, 7, 0, 0]]
    with pytest.raises(ValueError, match="saliency"):
        saliency_only_label(np.zeros((2, 4, 3), np.uint8), none, [7], sal)


def test_saliency_only_labels_of_a_split_need_no_cams(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    ids = dataset.ids("val")
    sal = saliency_from_masks(tmp_path / "sal.h5", dataset, ids)
    record = make_saliency_only_labels(sal, dataset.root, "val", tmp_path / "only", workers=2)
    assert record["images"] == len(ids) and record["sal_threshold"] == 0.5
    with SaliencyReader(sal) as reader:
        for image_id in ids:
            with Image.open(tmp_path / "only" / f"{image_id}.png") as png:
                got = np.asarray(png)
            image = dataset.load_image(image_id)
            expected = saliency_only_label(
                image, np.zeros((0, *image.shape[:2])), dataset.labels(image_id), reader.read(image_id)
            )
            np.testing.assert_array_equal(got, expected)
