"""The report's overlay grid: image choice, columns, pixel size, atomic output, errors."""

import json

import numpy as np
import pytest
from PIL import Image

from wsss_core.cams.store import CAMWriter
from wsss_core.data.voc_layout import VOCDataset, voc_palette
from wsss_core.fileio import save_label_png
from wsss_core.report.overlays import _render, choose_images, colorize, render_overlays


def classes_of(ds, ids):
    return set().union(*(ds.labels(i) for i in ids))


def make_cams(ds, split, path):
    """A CAM store whose maps are each labelled class's mask at 0.8 (so the heat map has something to show)."""
    with CAMWriter(path, classes=ds.classes, scales=[1.0], stride=16, checkpoint_sha256="0" * 64) as writer:
        for image_id in ds.ids(split):
            mask, labels = ds.load_mask(image_id), ds.labels(image_id)
            writer.write(
                image_id,
                np.stack([(mask == c) * 0.8 for c in labels]) if labels else np.zeros((0, *mask.shape)),
                labels,
            )
    return path


def make_pseudo(ds, split, folder):
    """Pseudo labels: the masks with a void border, as pseudo-label generation leaves uncertain pixels."""
    folder.mkdir()
    for image_id in ds.ids(split):
        labels = ds.load_mask(image_id).copy()
        labels[:4] = 255
        save_label_png(folder / f"{image_id}.png", labels, voc_palette())
    return folder


def png_size(path):
    with Image.open(path) as img:
        return img.size


def test_choice_adds_classes_greedily_then_fills_in_split_order(tmp_path):
    root = tmp_path / "ds"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    labels = {"a": [1], "b": [1], "c": [1, 2], "d": [2], "e": [3], "f": [1]}
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in labels))
    (root / "cls_labels.json").write_text(json.dumps(labels))
    (root / "classes.txt").write_text("background\ncat\ndog\ncar\n")
    ds = VOCDataset(root)
    ids = ds.ids("train")
    assert choose_images(ds, ids, 3) == ["a", "c", "e"]
    assert choose_images(ds, ids, 2) == ["a", "c"]
    assert choose_images(ds, ids, 5) == ["a", "b", "c", "d", "e"]  # all classes shown: fill with b, d
    assert choose_images(ds, ids, 10) == ids
    with pytest.raises(ValueError, match="n_images"):
        choose_images(ds, ids, 0)


def test_choice_on_the_demo_covers_more_classes_than_the_first_ids(tiny_demo):
    ds = VOCDataset(tiny_demo)
    ids = ds.ids("train")
    differed = False
    for n in range(1, 7):
        chosen = choose_images(ds, ids, n)
        assert len(chosen) == n and chosen == choose_images(ds, ids, n)
        if set(chosen) != set(ids[:n]):
            differed = True
            assert len(classes_of(ds, chosen)) > len(classes_of(ds, ids[:n]))
    assert differed  # otherwise the demo cannot show the point of the rule


def test_full_grid_has_one_panel_per_row_and_column(tiny_demo, tmp_path):
    ds = VOCDataset(tiny_demo)
    cams = make_cams(ds, "train", tmp_path / "cams.h5")
    pseudo = make_pseudo(ds, "train", tmp_path / "pseudo")
    predicted = []

    def predict(image):  # stand-in network: dark pixels are class 1
        predicted.append(image.shape)
        return (image.mean(2) < 100).astype(np.uint8)

    out = tmp_path / "report" / "overlays.png"
    shown = _render(ds, "train", out, cam_h5=cams, pseudo_dir=pseudo, predict=predict, n_images=3)
    assert shown == choose_images(ds, ds.ids("train"), 3)
    assert len(predicted) == 3
    assert png_size(out) == (5 * 200, 3 * 200)  # image | CAM | pseudo | prediction | GT, 2 in x 100 dpi
    assert [p.name for p in out.parent.iterdir()] == ["overlays.png"]  # nothing temporary left beside it
    with Image.open(out) as img:
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    void = colorize(np.array([[255]], np.uint8))[0, 0]
    assert (pixels == void).all(1).any()  # the pseudo labels' void border is drawn in its palette colour

    again = tmp_path / "again.png"
    assert _render(ds, "train", again, cam_h5=cams, pseudo_dir=pseudo, predict=predict, n_images=3) == shown
    with Image.open(out) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_missing_sources_leave_their_columns_out(tiny_demo, tmp_path):
    ds = VOCDataset(tiny_demo)
    pseudo = make_pseudo(ds, "val", tmp_path / "pseudo")
    out = tmp_path / "overlays.png"
    shown = render_overlays(tiny_demo, "val", out, pseudo_dir=pseudo, n_images=4, panel_inches=1.5, dpi=80)
    assert png_size(out) == (3 * 120, 4 * 120)  # image | pseudo | GT
    assert shown == choose_images(ds, ds.ids("val"), 4)
    only_image_and_gt = tmp_path / "plain.png"
    assert render_overlays(tiny_demo, "val", only_image_and_gt, n_images=2) == choose_images(ds, ds.ids("val"), 2)
    assert png_size(only_image_and_gt) == (2 * 200, 2 * 200)


def test_errors_name_the_file_and_write_nothing(tiny_demo, tmp_path):
    ds = VOCDataset(tiny_demo)
    pseudo = make_pseudo(ds, "val", tmp_path / "pseudo")  # val only: the train images have none
    out = tmp_path / "overlays.png"
    first = choose_images(ds, ds.ids("train"), 1)[0]
    with pytest.raises(FileNotFoundError, match=f"pseudo/{first}.png: label map not found"):
        render_overlays(tiny_demo, "train", out, pseudo_dir=pseudo, n_images=1)
    cams = tmp_path / "cams.h5"
    with CAMWriter(cams, classes=ds.classes, scales=[1.0], stride=16, checkpoint_sha256="0" * 64) as writer:
        writer.write(first, np.zeros((1, 5, 5)), [1])
    with pytest.raises(ValueError, match=r"cams.h5: image '.*': CAMs are \(5, 5\)"):
        render_overlays(tiny_demo, "train", out, cam_h5=cams, n_images=1)
    with pytest.raises(ValueError, match="prediction of image"):
        _render(ds, "train", out, predict=lambda image: np.zeros((3, 3), np.uint8), n_images=1)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cams.h5", "pseudo"]
