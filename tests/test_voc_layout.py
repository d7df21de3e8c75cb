"""The one dataset interface: real VOC photographs, label sources, and validation problems."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import shared_dataset
from wsss_core.data.voc_layout import VOC_CLASSES, DatasetError, VOCDataset, voc_palette
from wsss_core.fileio import save_label_png


def test_reads_voc_coseg_as_it_is():
    ds = VOCDataset(shared_dataset("voc_coseg"))
    assert ds.classes == VOC_CLASSES and ds.label_source == "cls_labels.json"
    train, val = ds.ids("train_aug"), ds.ids("val")
    assert (len(train), len(val)) == (738, 186) and not set(train) & set(val)
    labels = ds.label_matrix(train + val)
    assert labels.shape == (924, 20)
    assert int((labels.sum(1) > 1).sum()) == 107  # multi-label images, as documented in shared/README
    image_id = train[0]
    image, mask = ds.load_image(image_id), ds.load_mask(image_id)
    assert image.dtype == np.uint8 and image.shape == (*mask.shape, 3)
    assert set(np.unique(mask)) - {0, 255} <= set(ds.labels(image_id))
    assert ds.validate(["train_aug", "val"]) == []


def test_reads_voc_samples_labels_from_masks():
    ds = VOCDataset(shared_dataset("voc_samples"))
    assert ds.label_source == "SegmentationClass" and ds.splits() == ["samples"]
    # the classes listed in shared/README.md for these photos
    expected = {
        "2011_000003": (5, 15),
        "2011_000006": (9, 15, 18),
        "2011_000025": (6, 7),
        "sample_aeroplane": (1,),
        "sample_sheep": (17,),
        "sample_bird": (3,),
        "sample_dining": (5, 9, 11, 15),
    }
    assert {i: ds.labels(i) for i in ds.ids("samples")} == expected
    assert 255 in ds.load_mask("2011_000003")  # VOC's void border survives the palette reader
    assert ds.validate(["samples"]) == []


def make_dataset(root, ids, classes=None, size=(20, 16)):
    """A small valid dataset in the VOC layout: one square object of class (k % C) + 1 per image."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    n_fg = (len(classes) if classes else len(VOC_CLASSES)) - 1
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    labels = {}
    for k, image_id in enumerate(ids):
        Image.new("RGB", size, (k * 10 % 255, 80, 120)).save(root / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros(size[::-1], np.uint8)
        mask[4:10, 4:10] = k % n_fg + 1
        mask[3, 3:11] = 255
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask, voc_palette())
        labels[image_id] = [k % n_fg + 1]
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return labels


def test_custom_classes_and_label_sources(tmp_path):
    classes = ["background", "cat", "dog"]
    labels = make_dataset(tmp_path, ["a", "b", "c"], classes=classes)
    ds = VOCDataset(tmp_path)
    assert ds.classes == tuple(classes) and ds.num_classes == 3
    assert ds.label_source == "SegmentationClass"
    assert [ds.labels(i) for i in "abc"] == [(1,), (2,), (1,)]

    # VOC XML annotations take over from masks
    (tmp_path / "Annotations").mkdir()
    for image_id in "abc":
        objects = "".join(f"<object><name>{n}</name></object>" for n in ("dog", "cat"))
        (tmp_path / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")
    ds = VOCDataset(tmp_path)
    assert ds.label_source == "Annotations" and ds.labels("a") == (1, 2)

    # cls_labels.json takes over from both
    labels["a"] = [2, 1, 2]
    (tmp_path / "cls_labels.json").write_text(json.dumps(labels))
    ds = VOCDataset(tmp_path)
    assert ds.label_source == "cls_labels.json" and ds.labels("a") == (1, 2) and ds.labels("b") == (2,)
    np.testing.assert_array_equal(ds.label_matrix(["a", "b"]), [[1, 1], [0, 1]])


def test_validation_reports_every_problem_with_its_file(tmp_path):
    ids = [f"im{k}" for k in range(8)]
    labels = make_dataset(tmp_path, ids, classes=["background", "cat", "dog"])
    jpg, png = tmp_path / "JPEGImages", tmp_path / "SegmentationClass"
    (jpg / "im0.jpg").unlink()  # missing image
    (jpg / "im1.jpg").write_bytes((jpg / "im1.jpg").read_bytes()[:60])  # truncated image
    save_label_png(png / "im2.png", np.zeros((5, 5), np.uint8), voc_palette())  # wrong size
    save_label_png(png / "im3.png", np.full((16, 20), 7, np.uint8), voc_palette())  # id 7 > 2
    (png / "im4.png").unlink()  # missing mask
    labels["im5"] = [3]  # label outside the class list
    del labels["im6"]  # no labels at all
    (tmp_path / "cls_labels.json").write_text(json.dumps(labels))
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("im7\nim7\n")  # duplicate

    problems = VOCDataset(tmp_path).validate(["train", "val", "test"], workers=2)
    text = [str(p) for p in problems]

    def has(path_end, words):
        return any(t.split(": ")[0].endswith(path_end) and words in t for t in text)

    assert has("JPEGImages/im0.jpg", "image file missing")
    assert has("JPEGImages/im1.jpg", "unreadable image")
    assert has("SegmentationClass/im2.png", "mask size 5x5 != image size 20x16")
    assert has("SegmentationClass/im3.png", "class ids [7] outside 0..2")
    assert has("SegmentationClass/im4.png", "mask file missing")
    assert has("cls_labels.json", "'im5': label ids [3] outside 1..2")
    assert has("cls_labels.json", "no labels for image 'im6'")
    assert has("ImageSets/Segmentation/val.txt", "duplicate ids ['im7']")
    assert has("ImageSets/Segmentation/test.txt", "split 'test' not found")
    assert len(problems) == 9, text

    with pytest.raises(DatasetError) as err:
        VOCDataset(tmp_path).check(["train"])
    assert len(err.value.problems) == 7 and "im3.png" in str(err.value)
    # Without the mask requirement a missing mask is fine (training needs labels only).
    assert not any("im4" in str(p) for p in VOCDataset(tmp_path).validate(["train"], require_masks=False))


def test_bad_roots_and_class_lists_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        VOCDataset(tmp_path / "nowhere")
    (tmp_path / "classes.txt").write_text("background\ncat\ncat\n")
    with pytest.raises(DatasetError, match=r"classes.txt: class names must be unique"):
        VOCDataset(tmp_path)
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "x.xml").write_text("<annotation><object><name>horse</name></object></annotation>")
    with pytest.raises(ValueError, match=r"x.xml: class name\(s\) \['horse'\] not in the class list"):
        VOCDataset(tmp_path).labels("x")


def test_cls_labels_must_be_lists_of_integer_class_ids(tmp_path):
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    labels = make_dataset(tmp_path, ids, classes=["background", "cat", "dog"])
    labels.update(a=["dog"], b=3, c=[True], d=[2.5, "1", 1], e=[1.0, 2], g=None)  # e: 1.0 is the integer 1
    (tmp_path / "cls_labels.json").write_text(json.dumps(labels))
    ds = VOCDataset(tmp_path)
    with pytest.raises(DatasetError, match=r"cls_labels.json: image 'a': label values \[\"dog\"\] are not integer"):
        ds.labels("a")
    with pytest.raises(DatasetError, match=r"cls_labels.json: image 'b': labels must be a list of class ids, got 3"):
        ds.labels("b")
    assert ds.labels("e") == (1, 2) and ds.labels("f") == (labels["f"][0],)

    text = [str(p) for p in ds.validate(["train"], workers=2)]
    assert all(t.split(": ")[0].endswith("cls_labels.json") for t in text), text
    assert sorted(t.split(": ", 1)[1] for t in text) == [
        "image 'a': label values [\"dog\"] are not integer class ids",
        "image 'b': labels must be a list of class ids, got 3",
        "image 'c': label values [true] are not integer class ids",
        "image 'd': label values [2.5, \"1\"] are not integer class ids",
        "image 'g': labels must be a list of class ids, got null",
    ]


def test_split_ids_must_be_plain_file_names(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root, ["a", "b"])
    make_dataset(tmp_path / "other", ["x"])  # a valid image outside the dataset root
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    bad = ["../../other/JPEGImages/x", "..", ".hidden", "sub\\x", "/etc/passwd", "nul\x00byte", "bell\x07"]
    split.write_text("a\n" + "\n".join(bad) + "\n\nb 1\n")
    ds = VOCDataset(root)
    with pytest.raises(DatasetError) as err:
        ds.ids("train")
    problems = [str(p) for p in err.value.problems]
    assert len(problems) == len(bad) and all(p.startswith(f"{split}: line ") for p in problems)
    assert (
        problems[0] == f"{split}: line 2: id '../../other/JPEGImages/x' is not a plain file name "
        "(contains a path separator)"
    )
    assert "line 3: id '..' is not a plain file name (starts with '.')" in problems[1]
    assert "line 7: id 'nul\\x00byte' is not a plain file name (contains non-printing characters U+0000)" in problems[5]
    assert "line 8: id 'bell\\x07'" in problems[6]
    # validation lists the same problems, and still checks the plain ids
    (root / "JPEGImages" / "b.jpg").unlink()
    found = [str(p) for p in ds.validate(["train"], workers=2)]
    assert found[: len(bad)] == problems
    assert found[len(bad) :] == [f"{root / 'JPEGImages' / 'b.jpg'}: image file missing"]


def test_a_byte_order_mark_is_ignored(tmp_path):
    labels = make_dataset(tmp_path, ["a", "b"], classes=["background", "cat", "dog"])
    bom = "\ufeff"
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text(bom + "a\nb\n", encoding="utf-8")
    (tmp_path / "classes.txt").write_text(bom + "background\ncat\ndog\n", encoding="utf-8")
    (tmp_path / "cls_labels.json").write_text(bom + json.dumps(labels), encoding="utf-8")
    ds = VOCDataset(tmp_path)
    assert ds.ids("train") == ["a", "b"] and ds.classes == ("background", "cat", "dog")
    assert ds.labels("a") == (1,) and ds.validate(["train"]) == []
    # a mark anywhere else is an invisible character in an id: refused, not looked up
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n" + bom + "b\n", encoding="utf-8")
    with pytest.raises(
        DatasetError,
        match=r"line 2: id '\\ufeffb' is not a plain file name \(contains non-printing " r"characters U\+FEFF\)",
    ):
        VOCDataset(tmp_path).ids("train")


def test_voc_split_files_with_a_byte_order_mark_or_paths(tmp_path):
    """The raw VOC / SBD split files that prepare_voc reads follow the same rules."""
    from wsss_core.data.prepare_voc import _read_ids

    path = tmp_path / "train.txt"
    path.write_text("\ufeff2007_000032\n2007_000039 1\n", encoding="utf-8")
    assert _read_ids(path) == ["2007_000032", "2007_000039"]
    path.write_text("2007_000032\n../x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.txt: 1 bad id\(s\): line 2: id '../x' is not a plain file name"):
        _read_ids(path)
