"""VOC 2012 + SBD assembly on miniature archives with the real layouts and formats."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from voc_archives import (
    EXPECTED_TRAIN_AUG,
    OBJECTS,
    SBD_ONLY_MASK_CLASSES,
    SBD_TRAIN,
    SBD_VAL,
    VOC_TRAIN,
    VOC_VAL,
    FaultyServer,
    build_archives,
    image_size,
    sbd_mask,
    voc_mask,
    write_sbd_tree,
    write_voc_tree,
)

from wsss_core.data.download import fetch, safe_extract
from wsss_core.data.prepare_voc import (
    build_aug_dataset,
    find_sbd_root,
    find_voc_root,
    read_sbd_mask,
    train_aug_ids,
)
from wsss_core.data.voc_layout import VOC_CLASSES, VOCDataset, voc_palette


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Extracted fake VOC and SBD trees (module-scoped: tests only read them)."""
    root = tmp_path_factory.mktemp("raw")
    write_voc_tree(root / "voc")
    write_sbd_tree(root / "sbd")
    return root / "voc", root / "sbd"


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "voc_aug"
    logs: list[str] = []
    summary = build_aug_dataset(*sources, out, workers=2, log=logs.append)
    return out, summary, logs


def quiet(_msg: str) -> None:
    pass


def test_find_roots_accept_outer_and_inner_folders(sources):
    voc, sbd = sources
    inner_voc, inner_sbd = voc / "VOCdevkit" / "VOC2012", sbd / "benchmark_RELEASE" / "dataset"
    assert find_voc_root(voc) == find_voc_root(voc / "VOCdevkit") == find_voc_root(inner_voc) == inner_voc
    assert find_sbd_root(sbd) == find_sbd_root(sbd / "benchmark_RELEASE") == find_sbd_root(inner_sbd) == inner_sbd
    with pytest.raises(FileNotFoundError, match=str(sbd)):
        find_voc_root(sbd)
    with pytest.raises(FileNotFoundError, match="SBD"):
        find_sbd_root(voc)


def test_train_aug_set_algebra():
    ids = train_aug_ids(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL)
    assert ids == EXPECTED_TRAIN_AUG
    assert "2008_000002" not in ids  # SBD train but VOC val
    assert "2008_000003" not in ids  # SBD val and VOC val
    assert {"2007_000063", "2007_000121"} <= set(ids)  # VOC train, not in SBD
    assert "2010_000001" not in ids  # in no split


def test_sbd_mat_reader_matches_what_was_saved(sources):
    path = find_sbd_root(sources[1]) / "cls" / "2009_000001.mat"
    mask = read_sbd_mask(path)
    expected = sbd_mask(OBJECTS["2009_000001"], image_size(list(OBJECTS).index("2009_000001")))
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)


def test_built_dataset_layout_and_summary(built):
    out, summary, logs = built
    assert summary == {"train": 4, "val": 3, "train_aug": 7, "masks_from_voc": 7, "masks_from_sbd": 3}
    ds = VOCDataset(out)
    assert ds.ids("train_aug") == EXPECTED_TRAIN_AUG
    assert ds.ids("train") == VOC_TRAIN and ds.ids("val") == VOC_VAL
    assert ds.validate(["train_aug", "val", "train"]) == []
    assert sorted(p.stem for p in (out / "SegmentationClassAug").iterdir()) == sorted(EXPECTED_TRAIN_AUG + VOC_VAL)
    for name in ("JPEGImages", "Annotations", "SegmentationClass"):
        assert (out / name).is_symlink() and (out / name).is_dir()
    assert os.readlink(out / "SegmentationClass") == "SegmentationClassAug"
    assert any("masks: 10/10" in ln for ln in logs)


def test_masks_are_palette_pngs_and_voc_wins_over_sbd(built):
    out = built[0]
    ds = VOCDataset(out)
    for image_id in EXPECTED_TRAIN_AUG + VOC_VAL:
        hw = image_size(list(OBJECTS).index(image_id))
        mask = ds.load_mask(image_id)
        if image_id in VOC_TRAIN + VOC_VAL:  # 2007_000032/39 also have (different) SBD masks
            assert np.array_equal(mask, voc_mask(OBJECTS[image_id], hw)), image_id
        else:
            classes = SBD_ONLY_MASK_CLASSES.get(image_id, OBJECTS[image_id])
            assert np.array_equal(mask, sbd_mask(classes, hw)), image_id
    assert not np.array_equal(ds.load_mask("2007_000032"), sbd_mask(OBJECTS["2007_000032"], image_size(0)))
    with Image.open(out / "SegmentationClassAug" / "2009_000003.png") as img:
        assert img.mode == "P" and img.getpalette()[: 3 * 21] == voc_palette()[: 3 * 21]
    assert 255 in ds.load_mask("2007_000032")  # VOC's void border survived


def test_cls_labels_come_from_the_xml(built):
    out = built[0]
    labels = json.loads((out / "cls_labels.json").read_text())
    assert sorted(labels) == sorted(EXPECTED_TRAIN_AUG + VOC_VAL)
    for image_id, value in labels.items():
        assert value == sorted(VOC_CLASSES.index(n) for n in set(OBJECTS[image_id]))
    # "person" is only in 2009_000002's XML, not in its SBD mask; the "head" part adds nothing
    assert labels["2009_000002"] == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert VOCDataset(out).labels("2009_000002") == (12, 15)


def test_missing_mask_names_the_file_and_writes_nothing(sources, tmp_path):
    voc, sbd = tmp_path / "voc", tmp_path / "sbd"
    shutil.copytree(sources[0], voc, symlinks=True)
    shutil.copytree(sources[1], sbd, symlinks=True)
    (find_sbd_root(sbd) / "cls" / "2009_000003.mat").unlink()
    out = tmp_path / "data" / "voc_aug"
    with pytest.raises(FileNotFoundError, match="2009_000003.mat"):
        build_aug_dataset(voc, sbd, out, workers=1, log=quiet)
    assert not out.exists() and list(tmp_path.glob("data/*")) == []


def test_corrupt_sbd_mat_names_the_file_and_writes_nothing(sources, tmp_path):
    voc, sbd = tmp_path / "voc", tmp_path / "sbd"
    shutil.copytree(sources[0], voc, symlinks=True)
    shutil.copytree(sources[1], sbd, symlinks=True)
    (find_sbd_root(sbd) / "cls" / "2009_000001.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    out = tmp_path / "data" / "voc_aug"
    with pytest.raises(ValueError, match="2009_000001.mat"):
        build_aug_dataset(voc, sbd, out, workers=2, log=quiet)
    assert list(tmp_path.glob("data/*")) == []  # no dataset, no temporary folder


def test_sources_outside_the_data_folder_get_absolute_links(sources, tmp_path):
    out = tmp_path / "data" / "voc_aug"
    build_aug_dataset(*sources, out, workers=1, log=quiet)  # sources live in another tmp folder
    target = os.readlink(out / "JPEGImages")
    assert os.path.isabs(target) and target == str(find_voc_root(sources[0]) / "JPEGImages")


def test_rebuild_replaces_and_refuses_to_overwrite_sources(sources, tmp_path):
    out = tmp_path / "voc_aug"
    build_aug_dataset(*sources, out, workers=1, log=quiet)
    (out / "stale.txt").write_text("from an older run")
    build_aug_dataset(*sources, out, workers=1, log=quiet)
    assert not (out / "stale.txt").exists()
    with pytest.raises(ValueError, match="overlaps"):
        build_aug_dataset(*sources, find_voc_root(sources[0]), log=quiet)
    assert (find_voc_root(sources[0]) / "JPEGImages").is_dir()


def test_end_to_end_download_extract_build(tmp_path):
    voc_tar, sbd_tgz = build_archives(tmp_path / "upstream")
    files = {"/voc.tar": voc_tar.read_bytes(), "/benchmark.tgz": sbd_tgz.read_bytes()}
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    data = tmp_path / "data"
    with FaultyServer(files) as server:
        server.drop_after, server.drop_requests = 4096, 1  # the first download must resume
        voc_archive = fetch(
            server.url("/voc.tar"), data / "downloads" / "voc.tar", md5["/voc.tar"], backoff_s=0, log=quiet
        )
        sbd_archive = fetch(
            server.url("/benchmark.tgz"),
            data / "downloads" / "benchmark.tgz",
            md5["/benchmark.tgz"],
            backoff_s=0,
            log=quiet,
        )
        assert [r.range for r in server.requests] == [None, "bytes=4096-", None]
    voc_dir = safe_extract(voc_archive, data / "raw" / "voc", log=quiet)
    sbd_dir = safe_extract(sbd_archive, data / "raw" / "sbd", log=quiet)
    summary = build_aug_dataset(voc_dir, sbd_dir, data / "voc12", workers=2, log=quiet)
    assert summary["train_aug"] == len(EXPECTED_TRAIN_AUG)
    ds = VOCDataset(data / "voc12")
    assert ds.validate(["train_aug", "val"]) == []
    assert ds.label_source == "cls_labels.json"
    assert os.readlink(data / "voc12" / "JPEGImages") == "../raw/voc/VOCdevkit/VOC2012/JPEGImages"
    assert ds.load_image("2009_000001").shape[:2] == image_size(list(OBJECTS).index("2009_000001"))
