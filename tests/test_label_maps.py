"""Evaluating a folder of label PNGs: perfect copies, void labels and coverage, brute-force IoU, errors."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset, voc_palette
from wsss_core.fileio import save_label_png
from wsss_core.label_maps import evaluate_label_dir, label_confusion, read_label_png


def write_folder(folder, maps):
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, labels in maps.items():
        save_label_png(folder / f"{image_id}.png", labels, voc_palette())
    return folder


def masks(dataset, split="val"):
    return {i: dataset.load_mask(i).copy() for i in dataset.ids(split)}


def evaluate(folder, dataset, tmp_path, workers=1):
    return evaluate_label_dir(
        folder,
        dataset.root,
        "val",
        stage="pseudo",
        method="test",
        workers=workers,
        out_per_class_csv=tmp_path / "per_class.csv",
        summary_row_csv=tmp_path / "row.csv",
    )


def test_perfect_copy_scores_100(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    folder = write_folder(tmp_path / "labels", masks(dataset))
    row = evaluate(folder, dataset, tmp_path)
    assert row == {
        "stage": "pseudo",
        "method": "test",
        "split": "val",
        "mIoU": 100.0,
        "coverage": 100.0,
        "images": len(dataset.ids("val")),
    }
    written = pd.read_csv(tmp_path / "row.csv")
    assert written.to_dict("records") == [row]
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    assert list(per_class["class"]) == list(dataset.classes)
    present = per_class["gt_pixels"] > 0
    assert (per_class.loc[present, ["IoU", "precision", "recall"]] == 100.0).all().all()


def test_void_labels_lower_coverage_not_miou(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    maps = masks(dataset)
    for labels in maps.values():
        labels[:, ::2] = IGNORE_INDEX  # every other column: half the pixels
    conf, counts = label_confusion(write_folder(tmp_path / "labels", maps), dataset.root, "val")
    gt_pixels = sum(int((dataset.load_mask(i) != IGNORE_INDEX).sum()) for i in maps)
    assert counts["gt_pixels"] == gt_pixels and conf.sum() == counts["labelled_pixels"]
    row = evaluate(tmp_path / "labels", dataset, tmp_path)
    assert row["mIoU"] == 100.0
    assert 45.0 < row["coverage"] < 55.0
    assert row["coverage"] == pytest.approx(100 * counts["labelled_pixels"] / gt_pixels, abs=0.005)  # 2 decimals


def brute_force(dataset, maps):
    """Per-class IoU by direct counting over pixels with non-void GT and non-void label."""
    C = dataset.num_classes
    inter, union = np.zeros(C), np.zeros(C)
    for image_id, pred in maps.items():
        gt = dataset.load_mask(image_id)
        counted = (gt != IGNORE_INDEX) & (pred != IGNORE_INDEX)
        for c in range(C):
            inter[c] += ((gt == c) & (pred == c) & counted).sum()
            union[c] += (((gt == c) | (pred == c)) & counted).sum()
    return inter, union


def test_wrong_class_matches_brute_force(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    rng = np.random.default_rng(0)
    maps = masks(dataset)
    for labels in maps.values():
        labels[labels == 1] = 2  # a known confusion: every class-1 pixel called class 2
        labels[rng.random(labels.shape) < 0.1] = IGNORE_INDEX
        labels[rng.random(labels.shape) < 0.05] = 0
    folder = write_folder(tmp_path / "labels", maps)
    conf, _ = label_confusion(folder, dataset.root, "val")
    inter, union = brute_force(dataset, maps)
    assert inter[1] == 0 and union[1] > 0  # class 1 occurs, so its IoU is a real 0
    iou = inter / union
    expected = 100 * iou[union > 0].mean()
    row = evaluate(folder, dataset, tmp_path)
    assert row["mIoU"] == pytest.approx(expected, abs=1e-9)
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    np.testing.assert_allclose(per_class["IoU"].to_numpy()[union > 0], 100 * iou[union > 0])
    np.testing.assert_array_equal(np.diag(conf), inter)


def test_workers_give_the_same_result(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    rng = np.random.default_rng(1)
    maps = {i: rng.choice([0, 1, 2, 3, 4, IGNORE_INDEX], m.shape).astype(np.uint8) for i, m in masks(dataset).items()}
    folder = write_folder(tmp_path / "labels", maps)
    conf1, counts1 = label_confusion(folder, dataset.root, "val", workers=1)
    conf2, counts2 = label_confusion(folder, dataset.root, "val", workers=2)
    np.testing.assert_array_equal(conf1, conf2)
    assert counts1 == counts2 and conf1.sum() > 0


def test_missing_and_mismatched_files_are_named(tiny_demo, tmp_path):
    dataset = VOCDataset(tiny_demo)
    ids = dataset.ids("val")
    maps = masks(dataset)
    del maps[ids[2]]
    folder = write_folder(tmp_path / "labels", maps)
    with pytest.raises(FileNotFoundError, match=rf"labels/{ids[2]}.png: label map not found"):
        label_confusion(folder, dataset.root, "val")
    maps = masks(dataset)
    maps[ids[4]] = maps[ids[4]][:, :-3]
    folder = write_folder(tmp_path / "resized", maps)
    with pytest.raises(ValueError, match=rf"resized/{ids[4]}.png: .* mask .*SegmentationClass/{ids[4]}.png"):
        label_confusion(folder, dataset.root, "val", workers=2)
    maps = masks(dataset)
    maps[ids[0]][0, 0] = 9  # no class 9 in a 5-class dataset
    folder = write_folder(tmp_path / "bad_class", maps)
    with pytest.raises(ValueError, match=rf"bad_class/{ids[0]}.png vs .*: predicted class 9"):
        label_confusion(folder, dataset.root, "val")


def test_read_label_png(tmp_path):
    labels = np.array([[0, 3], [255, 7]], np.uint8)
    save_label_png(tmp_path / "p.png", labels, voc_palette())
    np.testing.assert_array_equal(read_label_png(tmp_path / "p.png"), labels)
    Image.fromarray(labels, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png"), labels)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png: label map mode RGB"):
        read_label_png(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: unreadable label map"):
        read_label_png(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_label_png(tmp_path / "absent.png")
