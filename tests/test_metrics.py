"""Confusion matrix, IoU and mIoU against an independent brute-force count over pixels."""

import math

import numpy as np
import pytest

from wsss_core.metrics import confusion_matrix, iou_from_confusion, miou, per_class_table, roc_auc

VOID = 255


def brute_force_iou(pairs, num_classes):
    """Per-class IoU from (gt, pred) pixel pairs by direct counting; None where the union is empty."""
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for g, p in pairs:
            if g == VOID:
                continue
            inter += g == c and p == c
            union += g == c or p == c
        ious.append(inter / union if union else None)
    return ious


def random_case(rng):
    """A few small label maps with void pixels and classes missing from GT, prediction or both."""
    num_classes = int(rng.integers(2, 7))
    gt_classes = rng.choice(num_classes, size=int(rng.integers(1, num_classes + 1)), replace=False)
    pred_classes = rng.choice(num_classes, size=int(rng.integers(1, num_classes + 1)), replace=False)
    images = []
    for _ in range(int(rng.integers(1, 4))):
        shape = (int(rng.integers(1, 7)), int(rng.integers(1, 7)))
        gt = rng.choice(gt_classes, size=shape).astype(np.uint8)
        gt[rng.random(shape) < 0.2] = VOID
        pred = rng.choice(pred_classes, size=shape).astype(np.uint8)
        images.append((gt, pred))
    return num_classes, images


@pytest.mark.parametrize("seed", range(300))
def test_matches_brute_force_on_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    num_classes, images = random_case(rng)
    conf = sum(confusion_matrix(gt, pred, num_classes) for gt, pred in images)
    pairs = [(int(g), int(p)) for gt, pred in images for g, p in zip(gt.ravel(), pred.ravel())]

    expected = brute_force_iou(pairs, num_classes)
    got = iou_from_confusion(conf)
    for c, (want, have) in enumerate(zip(expected, got)):
        if want is None:
            assert math.isnan(have), f"class {c}"
        else:
            assert have == pytest.approx(want), f"class {c}"
    defined = [v for v in expected if v is not None]
    if defined:
        assert miou(conf) == pytest.approx(sum(defined) / len(defined))
    else:  # every pixel void
        assert math.isnan(miou(conf))
    assert conf.sum() == sum(g != VOID for g, _ in pairs)
    assert conf.dtype == np.int64


def test_hand_computed_case():
    gt = np.array([[0, 0, 1], [1, VOID, 2]], np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], np.uint8)
    conf = confusion_matrix(gt, pred, 4)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = expected[0, 1] = expected[2, 0] = 1
    expected[1, 1] = 2
    np.testing.assert_array_equal(conf, expected)
    # class 0: 1 / (2 + 2 - 1); class 1: 2 / (2 + 3 - 2); class 2 in GT only: 0; class 3 nowhere: NaN
    np.testing.assert_allclose(iou_from_confusion(conf), [1 / 3, 2 / 3, 0.0, np.nan])
    assert miou(conf) == pytest.approx(1 / 3)

    table = per_class_table(conf, ["bg", "a", "b", "c"])
    assert list(table.columns) == ["class", "IoU", "precision", "recall", "gt_pixels", "pred_pixels"]
    assert table["gt_pixels"].tolist() == [2, 2, 1, 0]
    assert table["pred_pixels"].tolist() == [2, 3, 0, 0]
    np.testing.assert_allclose(table["precision"], [0.5, 2 / 3, np.nan, np.nan])
    np.testing.assert_allclose(table["recall"], [0.5, 1.0, 0.0, np.nan])


def test_class_only_predicted_counts_as_zero():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 1]], np.uint8)
    conf = confusion_matrix(gt, pred, 3)
    np.testing.assert_allclose(iou_from_confusion(conf), [0.75, 0.0, np.nan])
    assert miou(conf) == pytest.approx(0.375)


def test_bad_predictions_are_rejected_by_value():
    gt = np.array([[0, 1, VOID]], np.uint8)
    with pytest.raises(ValueError, match="predicted class 7 outside 0..3"):
        confusion_matrix(gt, np.array([[0, 7, 0]]), 4)
    with pytest.raises(ValueError, match="predicted class -1"):
        confusion_matrix(gt, np.array([[-1, 1, 0]]), 4)
    with pytest.raises(ValueError, match="predicted class 255"):
        confusion_matrix(gt, np.array([[255, 1, 0]], np.uint8), 4)
    with pytest.raises(ValueError, match="ground-truth class 9"):
        confusion_matrix(np.array([[9]], np.uint8), np.array([[0]], np.uint8), 4)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(gt, np.zeros((3, 1), np.uint8), 4)
    # a void ground-truth pixel is skipped whatever was predicted there
    assert confusion_matrix(gt, np.array([[0, 1, 200]]), 4).sum() == 2


def test_nothing_to_evaluate_gives_nan():
    conf = confusion_matrix(np.full((2, 2), VOID, np.uint8), np.zeros((2, 2), np.uint8), 3)
    assert conf.sum() == 0
    assert math.isnan(miou(conf))
    with pytest.raises(ValueError, match="2 class names"):
        per_class_table(conf, ["bg", "a"])


def test_roc_auc_is_the_share_of_ordered_pairs_ties_counting_half():
    pos, neg = np.array([0.9, 0.5, 0.5]), np.array([0.5, 0.1])
    # pairs (pos > neg): 0.9 beats both; each 0.5 beats 0.1 and ties 0.5 -> (2 + 1.5 + 1.5) / 6
    assert roc_auc(pos, neg) == pytest.approx(5 / 6)
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([0.0]), np.array([1.0])) == 0.0
    with pytest.raises(ValueError, match="0 negative"):
        roc_auc(np.array([1.0]), np.array([]))
