"""Dense CRF: valid marginals, labels snap to colour edges (synthetic and real photos), input checks."""

import numpy as np
import pytest
from scipy import ndimage

from conftest import shared_dataset
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.pseudo.crf import CRF_KEYS, crf_labels, crf_probs

# IRN / PSA defaults.
PARAMS = dict(iterations=10, gt_prob=0.7, pos_xy_std=3, pos_w=3, bi_xy_std=50, bi_rgb_std=5, bi_w=10)


def two_colour_image(h=48, w=64, edge=30, seed=0):
    """Left of column ``edge`` dark red, right of it light blue, with mild noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.float64)
    image[:, :edge] = (150, 30, 30)
    image[:, edge:] = (60, 120, 220)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_marginals_sum_to_one_and_are_finite():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    logits = rng.normal(0, 2, (3, 20, 30))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    probs[0, :5] = 0.0  # exact zeros must be clipped, not turned into infinite unaries
    q = crf_probs(image, probs, PARAMS)
    assert q.shape == (3, 20, 30) and q.dtype == np.float32
    assert np.isfinite(q).all() and (q >= 0).all()
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)


def test_zero_iterations_return_the_input_distribution():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(4), size=(8, 9)).transpose(2, 0, 1)
    probs = np.clip(probs, 1e-3, 1) / np.clip(probs, 1e-3, 1).sum(0)
    np.testing.assert_allclose(crf_probs(image, probs, {**PARAMS, "iterations": 0}), probs, atol=1e-5)


def test_non_contiguous_inputs_give_the_contiguous_result():
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    view = big[::-1, 5:35]  # flipped and cropped: strided, not C-contiguous
    assert not view.flags["C_CONTIGUOUS"]
    probs = rng.dirichlet(np.ones(2), size=(30, 30)).transpose(2, 0, 1)  # a transposed view
    assert not probs.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(
        crf_probs(view, probs, PARAMS), crf_probs(view.copy(), np.ascontiguousarray(probs), PARAMS)
    )
    labels = (rng.random((30, 40)) < 0.5).astype(np.uint8).T[:30, :30]
    np.testing.assert_array_equal(
        crf_labels(view, labels, [0, 1], PARAMS), crf_labels(view.copy(), labels.copy(), [0, 1], PARAMS)
    )


def test_noisy_labels_snap_to_the_colour_edge():
    image = two_colour_image()
    truth = np.where(np.arange(64) < 30, 0, 3).astype(np.uint8)[None].repeat(48, 0)
    rng = np.random.default_rng(4)
    noisy = truth.copy()
    noisy[:, 30:36] = 0  # the boundary drawn 6 px too far right, as an upsampled CAM would
    flip = rng.random(truth.shape) < 0.15  # and salt-and-pepper errors
    noisy[flip] = np.where(noisy[flip] == 0, 3, 0)
    before = (noisy == truth).mean()
    refined = crf_labels(image, noisy, [0, 3], PARAMS)
    after = (refined == truth).mean()
    assert refined.dtype == np.uint8 and set(np.unique(refined)) <= {0, 3}
    assert before < 0.82 and after > before + 0.12, f"accuracy {before:.3f} -> {after:.3f}"


def test_probabilities_snap_to_the_colour_edge():
    image = two_colour_image()
    # A soft ramp centred 8 px right of the true edge at column 30.
    ramp = 1 / (1 + np.exp(-(np.arange(64) - 38) / 3.0))
    probs = np.stack([1 - ramp, ramp])[:, None, :].repeat(48, 1)
    truth = (np.arange(64) >= 30)[None].repeat(48, 0)
    before = ((probs.argmax(0) == 1) == truth).mean()
    after = ((crf_probs(image, probs, PARAMS).argmax(0) == 1) == truth).mean()
    assert after > before + 0.08, f"accuracy {before:.3f} -> {after:.3f}"


def test_label_checks():
    image = two_colour_image(8, 8, 4)
    labels = np.zeros((8, 8), np.uint8)
    labels[0, 0] = 7
    with pytest.raises(ValueError, match=r"value\(s\) \[7\] not in label_set \[0, 3\]"):
        crf_labels(image, labels, [0, 3], PARAMS)
    with pytest.raises(ValueError, match="distinct"):
        crf_labels(image, labels, [0, 7, 7], PARAMS)
    with pytest.raises(ValueError, match="matching the image"):
        crf_labels(image, labels[:4], [0, 7], PARAMS)
    with pytest.raises(ValueError, match="uint8"):
        crf_labels(image.astype(np.float32), labels, [0, 7], PARAMS)
    # One label: nothing to decide, the map comes back unchanged (and as a copy).
    single = np.full((8, 8), 5, np.uint8)
    out = crf_labels(image, single, [5], PARAMS)
    np.testing.assert_array_equal(out, single)
    assert out is not single


@pytest.mark.parametrize("key", CRF_KEYS)
def test_every_param_is_required(key):
    params = {k: v for k, v in PARAMS.items() if k != key}
    image, probs = two_colour_image(4, 4, 2), np.full((2, 4, 4), 0.5)
    with pytest.raises(ValueError, match=f"lack key '{key}'"):
        crf_probs(image, probs, params)
    with pytest.raises(ValueError, match=f"lack key '{key}'"):
        crf_labels(image, np.zeros((4, 4), np.uint8), [0, 1], params)


@pytest.mark.parametrize("key, value", [("gt_prob", 1.0), ("iterations", 2.5), ("bi_rgb_std", 0), ("pos_w", "3")])
def test_bad_param_values(key, value):
    with pytest.raises(ValueError, match=key):
        crf_labels(two_colour_image(4, 4, 2), np.zeros((4, 4), np.uint8), [0, 1], {**PARAMS, key: value})


def _degrade(mask: np.ndarray, how: str) -> np.ndarray:
    """A coarse version of a GT mask; void (object borders) becomes background first."""
    m = np.where(mask == IGNORE_INDEX, 0, mask).astype(np.uint8)
    if how == "dilate10":  # every object grows 10 px into the background, like a blurry CAM
        grown = ndimage.grey_dilation(m, size=(21, 21))
        return np.where(m != 0, m, grown).astype(np.uint8)
    f = 16  # one label per 16x16 block, as a stride-16 CAM gives
    coarse = np.repeat(np.repeat(m[f // 2 :: f, f // 2 :: f], f, 0), f, 1)
    pad = ((0, max(0, m.shape[0] - coarse.shape[0])), (0, max(0, m.shape[1] - coarse.shape[1])))
    return np.pad(coarse, pad, mode="edge")[: m.shape[0], : m.shape[1]]


def _fg_iou(labels: np.ndarray, gt: np.ndarray) -> float:
    counted = gt != IGNORE_INDEX
    pred, true = (labels != 0) & counted, (gt != 0) & counted
    return float((pred & true).sum() / (pred | true).sum())


@pytest.mark.parametrize(
    "image_id, how", [("sample_sheep", "dilate10"), ("sample_sheep", "blocks16"), ("2011_000003", "dilate10")]
)
def test_real_photo_boundaries_improve(image_id, how):
    dataset = VOCDataset(shared_dataset("voc_samples"))
    image, gt = dataset.load_image(image_id), dataset.load_mask(image_id)
    degraded = _degrade(gt, how)
    label_set = [0, *dataset.labels(image_id)]
    refined = crf_labels(image, degraded, label_set, PARAMS)
    assert set(np.unique(refined)) <= set(label_set)
    before, after = _fg_iou(degraded, gt), _fg_iou(refined, gt)
    assert after > before + 0.03, f"{image_id} ({how}): foreground IoU {before:.4f} -> {after:.4f}"
