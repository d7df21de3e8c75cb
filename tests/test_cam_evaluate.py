"""The one-pass threshold sweep against a brute-force per-threshold loop; outputs and summary rows."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsss_core.cams.evaluate import DEFAULT_THRESHOLDS, cam_labels, evaluate_cams, sweep, threshold_confusions
from wsss_core.cams.store import CAMReader, CAMWriter
from wsss_core.data.voc_layout import VOCDataset, voc_palette
from wsss_core.fileio import save_label_png
from wsss_core.results import collect_summary, write_summary_rows

CLASSES = ["background", "a", "b", "c", "d"]
# CAM values include thresholds of the sweep (ties), some exact in float16 (0.25, 0.5), some not (0.3).
GRID = np.array([0.0, 0.1, 0.25, 0.3, 0.5, 0.5, 0.55, 1.0])


def make_case(root, seed, n_images=10):
    """A VOC-layout dataset with random masks (void included) and a CAM store for its 'train' split."""
    rng = np.random.default_rng(seed)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    ids = [f"img{i:02d}" for i in range(n_images)]
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    with CAMWriter(root / "train.h5", classes=CLASSES, scales=[1.0], stride=16, checkpoint_sha256="0" * 64) as writer:
        for i, image_id in enumerate(ids):
            h, w = int(rng.integers(4, 12)), int(rng.integers(4, 12))
            mask = rng.integers(0, len(CLASSES), (h, w)).astype(np.uint8)
            mask[rng.random((h, w)) < 0.15] = 255
            save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask, voc_palette())
            k = 0 if i == 0 else int(rng.integers(1, 4))
            labels = sorted(rng.choice(np.arange(1, len(CLASSES)), size=k, replace=False).tolist())
            cams = np.where(rng.random((k, h, w)) < 0.6, rng.choice(GRID, (k, h, w)), rng.random((k, h, w)))
            writer.write(image_id, cams, labels)
    return VOCDataset(root), ids


def brute_force_miou(reader, dataset, ids, threshold):
    """Explicit label maps (argmax over [t, dense CAMs], background first) and IoU by direct counting."""
    C = dataset.num_classes
    inter, union = np.zeros(C), np.zeros(C)
    for image_id in ids:
        dense = reader.dense(image_id, C).astype(np.float64)
        background = np.full((1, *dense.shape[1:]), threshold)
        pred = np.concatenate([background, dense]).argmax(0)
        gt = dataset.load_mask(image_id).astype(np.int64)
        counted = gt != 255
        np.testing.assert_array_equal(cam_labels(*reader.read(image_id), threshold), pred)
        for c in range(C):
            inter[c] += ((gt == c) & (pred == c) & counted).sum()
            union[c] += (((gt == c) | (pred == c)) & counted).sum()
    defined = union > 0
    return 100 * float((inter[defined] / union[defined]).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thresholds", [DEFAULT_THRESHOLDS, np.array([0.0, 0.125, 0.25, 0.375, 0.5, 0.55])])
def test_one_pass_sweep_equals_brute_force(tmp_path, seed, thresholds):
    dataset, ids = make_case(tmp_path, seed)
    with CAMReader(tmp_path / "train.h5") as reader:
        table = sweep(reader, dataset, ids, thresholds)
        expected = [brute_force_miou(reader, dataset, ids, t) for t in thresholds]
        confusions = threshold_confusions(reader, dataset, ids, thresholds)
    assert list(table.columns) == ["threshold", "mIoU", "fg_precision", "fg_recall"]
    np.testing.assert_allclose(table["threshold"], thresholds)
    np.testing.assert_allclose(table["mIoU"], expected, rtol=1e-12)
    masks = [dataset.load_mask(i) for i in ids]
    assert (confusions.sum(axis=(1, 2)) == sum(int((m != 255).sum()) for m in masks)).all()
    assert np.ptp(table["mIoU"]) > 0  # the threshold matters in these cases


def test_parallel_workers_give_the_same_confusions(tmp_path):
    dataset, ids = make_case(tmp_path, seed=5, n_images=12)
    one = threshold_confusions(tmp_path / "train.h5", dataset, ids, DEFAULT_THRESHOLDS)
    two = threshold_confusions(tmp_path / "train.h5", dataset, ids, DEFAULT_THRESHOLDS, workers=2)
    np.testing.assert_array_equal(one, two)
    with CAMReader(tmp_path / "train.h5") as reader, pytest.raises(ValueError, match="needs the CAM store's path"):
        threshold_confusions(reader, dataset, ids, DEFAULT_THRESHOLDS, workers=2)


def test_evaluate_cams_writes_every_output(tmp_path):
    dataset, ids = make_case(tmp_path / "data", seed=3)
    out = tmp_path / "out"
    record = evaluate_cams(
        tmp_path / "data" / "train.h5",
        tmp_path / "data",
        "train",
        out_csv=out / "sweep.csv",
        out_png=out / "sweep.png",
        out_best_json=out / "best.json",
        out_per_class_csv=out / "per_class.csv",
        method="cam",
        summary_row_csv=out / "rows" / "cams_cam.csv",
    )
    table = pd.read_csv(out / "sweep.csv")
    assert list(table.columns) == ["threshold", "mIoU", "fg_precision", "fg_recall"]
    assert table["threshold"].tolist() == [round(0.01 * i, 2) for i in range(61)]
    best = int(table["mIoU"].idxmax())
    saved = json.loads((out / "best.json").read_text())
    assert saved == record
    assert saved == {
        "threshold": table["threshold"][best],
        "mIoU": pytest.approx(table["mIoU"][best]),
        "split": "train",
        "method": "cam",
        "images": len(ids),
    }

    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["class"].tolist() == CLASSES
    assert per_class["IoU"].mean() == pytest.approx(record["mIoU"])  # pandas skips NaN like mIoU does

    with Image.open(out / "sweep.png") as img:
        assert img.format == "PNG" and img.size == (600, 400)
        img.verify()

    row = pd.read_csv(out / "rows" / "cams_cam.csv")
    assert row.to_dict("records") == [
        {
            "stage": "cams",
            "method": "cam",
            "split": "train",
            "mIoU": round(record["mIoU"], 2),
            "threshold": record["threshold"],
            "images": len(ids),
        }
    ]
    assert sorted(p.name for p in out.iterdir()) == ["best.json", "per_class.csv", "rows", "sweep.csv", "sweep.png"]


def test_size_mismatch_and_missing_images_are_named(tmp_path):
    dataset, ids = make_case(tmp_path, seed=4, n_images=3)
    mask = dataset.load_mask("img01")
    save_label_png(dataset.mask_path("img01"), np.zeros((mask.shape[0] + 1, mask.shape[1]), np.uint8), voc_palette())
    with pytest.raises(ValueError, match="image 'img01': CAMs are .* image resolution"):
        sweep(tmp_path / "train.h5", dataset, ids, [0.1, 0.2])
    with pytest.raises(ValueError, match=r"train.h5: no CAMs for 1 image\(s\) .*'img99'"):
        sweep(tmp_path / "train.h5", dataset, ["img00", "img99"], [0.1])
    save_label_png(dataset.mask_path("img01"), np.full(mask.shape, 7, np.uint8), voc_palette())
    with pytest.raises(ValueError, match=r"img01.png: class ids \[7\] outside 0..4"):
        sweep(tmp_path / "train.h5", dataset, ids, [0.1])
    with pytest.raises(ValueError, match="strictly increasing"):
        sweep(tmp_path / "train.h5", dataset, ids, [0.2, 0.1])


def test_summary_rows_are_collected_in_order_with_empty_extras(tmp_path):
    write_summary_rows(
        tmp_path / "cams.csv",
        [{"stage": "cams", "method": "cam", "split": "train", "mIoU": 48.123456, "threshold": 0.15}],
    )
    write_summary_rows(
        tmp_path / "pseudo.csv",
        [{"stage": "pseudo_labels", "method": "cam", "split": "train", "coverage": 0.8, "mIoU": 60.0}],
    )
    table = collect_summary([tmp_path / "cams.csv", tmp_path / "pseudo.csv"], tmp_path / "summary.csv")
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines == [
        "stage,method,split,mIoU,threshold,coverage",
        "cams,cam,train,48.12,0.15,",
        "pseudo_labels,cam,train,60.0,,0.8",
    ]
    assert table["stage"].tolist() == ["cams", "pseudo_labels"]
    with pytest.raises(ValueError, match="percentage"):
        write_summary_rows(tmp_path / "bad.csv", [{"stage": "s", "method": "m", "split": "x", "mIoU": 4812.0}])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['split'\]"):
        write_summary_rows(tmp_path / "bad.csv", [{"stage": "s", "method": "m", "mIoU": 4.0}])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        collect_summary([tmp_path / "nope.csv"], tmp_path / "summary.csv")
    assert not (tmp_path / "bad.csv").exists()
