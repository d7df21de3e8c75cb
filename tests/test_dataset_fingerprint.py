"""Content fingerprints of a dataset folder: each part's file changes exactly when what it covers changes."""

import json
import os
import shutil

import pytest
from PIL import Image

from conftest import first_id, void_mask_corner
from wsss_core.data.fingerprint import PARTS, update_fingerprints


@pytest.fixture
def dataset(tmp_path, tiny_demo):
    root = tmp_path / "ds"
    shutil.copytree(tiny_demo, root)
    return root


def snapshot(paths):
    """(content, mtime_ns) of every part file."""
    return {part: (p.read_text(), p.stat().st_mtime_ns) for part, p in paths.items()}


def changed(before, after):
    return {part for part in PARTS if before[part] != after[part]}


def fingerprint(root, out):
    return update_fingerprints(root, "train", "val", out)


def test_every_part_is_written_once_and_kept_while_nothing_changes(dataset, tmp_path):
    out = tmp_path / "fp"
    paths = fingerprint(dataset, out)
    assert set(paths) == set(PARTS) and all(p.is_file() for p in paths.values())
    before = snapshot(paths)
    assert json.loads(paths["train_images"].read_text())["images"] == len(
        (dataset / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    )
    # no-op touches: every file rewritten with the same bytes, times moved
    for path in dataset.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes())
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert changed(before, snapshot(fingerprint(dataset, out))) == set()


def test_a_val_mask_edit_changes_only_the_eval_masks(dataset, tmp_path):
    out = tmp_path / "fp"
    before = snapshot(fingerprint(dataset, out))
    mask = dataset / "SegmentationClass" / f"{first_id(dataset, 'val')}.png"
    void_mask_corner(mask)  # overwritten in place: the folder's own mtime stays
    assert changed(before, snapshot(fingerprint(dataset, out))) == {"eval_masks"}


def test_appending_a_train_id_changes_every_train_part(dataset, tmp_path):
    out = tmp_path / "fp"
    before = snapshot(fingerprint(dataset, out))
    split = dataset / "ImageSets" / "Segmentation" / "train.txt"
    val_id = first_id(dataset, "val")
    split.write_text(split.read_text() + f"{val_id}\n")
    assert changed(before, snapshot(fingerprint(dataset, out))) == {"train_labels", "train_images", "train_masks"}


def test_label_edits_change_the_labels_of_their_split_only(dataset, tmp_path):
    out = tmp_path / "fp"
    before = snapshot(fingerprint(dataset, out))
    path = dataset / "cls_labels.json"
    labels = json.loads(path.read_text())
    path.write_text(json.dumps(labels, indent=4))  # same labels, other bytes: nothing changes
    middle = snapshot(fingerprint(dataset, out))
    assert changed(before, middle) == set()
    train_id = first_id(dataset, "train")
    labels[train_id] = sorted(set(labels[train_id]) ^ {1})
    path.write_text(json.dumps(labels))
    after = snapshot(fingerprint(dataset, out))
    assert changed(middle, after) == {"train_labels"}
    val_id = first_id(dataset, "val")
    labels[val_id] = sorted(set(labels[val_id]) ^ {1})
    path.write_text(json.dumps(labels))
    assert changed(after, snapshot(fingerprint(dataset, out))) == {"eval_labels"}


def test_classes_images_and_missing_files_are_covered(dataset, tmp_path):
    out = tmp_path / "fp"
    before = snapshot(fingerprint(dataset, out))
    image = dataset / "JPEGImages" / f"{first_id(dataset, 'train')}.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(image)
    after = snapshot(fingerprint(dataset, out))
    assert changed(before, after) == {"train_images"}
    image.unlink()  # a missing file is fingerprinted as absent (validate_dataset reports it)
    gone = snapshot(fingerprint(dataset, out))
    assert changed(after, gone) == {"train_images"}
    classes = dataset / "classes.txt"
    classes.write_text(classes.read_text() + "extra\n")
    assert changed(gone, snapshot(fingerprint(dataset, out))) == set(PARTS)


def test_a_corrupt_stat_cache_only_costs_a_rehash(dataset, tmp_path):
    out = tmp_path / "fp"
    before = snapshot(fingerprint(dataset, out))
    (out / "stat_cache.json").write_text("{not json")
    assert changed(before, snapshot(fingerprint(dataset, out))) == set()
