"""Assemble PASCAL VOC 2012 + SBD into one dataset root in the layout of voc_layout.py.

Weakly supervised segmentation papers (PSA, IRN, ...) train on ``train_aug``: the
10,582 images of SBD train/val and VOC train that are not in VOC val, with SBD's
masks converted to PNG (``SegmentationClassAug``). This module builds exactly that,
symlinking VOC's images and annotations instead of copying 2 GB, and writes
``cls_labels.json`` from the VOC XML annotations, the image labels those papers use.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import scipy.io
from PIL import Image

from wsss_core.data.voc_layout import VOC_CLASSES, id_problem, read_lines, voc_palette
from wsss_core.fileio import atomic_dir, save_label_png, write_text

# The archives' URLs and md5s are config keys (voc12.* in config.yaml), used by rule download_archive.


def _find_root(path: str | os.PathLike, marker: str, inner: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    candidates = [path / sub for sub in ("", *inner)]
    for cand in candidates:
        if (cand / marker).is_dir():
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{path}: no {what} found (looked for {marker}/ in {tried})")


def find_voc_root(path: str | os.PathLike) -> Path:
    """The VOC2012 folder (holding JPEGImages/) given it, VOCdevkit, or the extraction folder."""
    return _find_root(path, "JPEGImages", ("VOC2012", "VOCdevkit/VOC2012"), "PASCAL VOC 2012")


def find_sbd_root(path: str | os.PathLike) -> Path:
    """SBD's dataset folder (holding cls/) given it, benchmark_RELEASE, or the extraction folder."""
    return _find_root(path, "cls", ("dataset", "benchmark_RELEASE/dataset"), "SBD dataset")


def train_aug_ids(
    voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str], sbd_val: Iterable[str]
) -> list[str]:
    """(SBD train ∪ SBD val ∪ VOC train) − VOC val, sorted: the standard train_aug split."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def _read_ids(path: Path) -> list[str]:
    """The ids of a split file (a leading byte order mark ignored); refuses ids that are not plain names."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file missing")
    ids, bad = [], []
    for number, line in enumerate(read_lines(path), 1):
        if line.strip():
            image_id = line.split()[0]
            reason = id_problem(image_id)
            ids.append(image_id)
            if reason:
                bad.append(f"line {number}: id {image_id!r} is not a plain file name ({reason})")
    if bad:
        raise ValueError(f"{path}: {len(bad)} bad id(s): " + "; ".join(bad[:20]) + ("; ..." if len(bad) > 20 else ""))
    return ids


def read_sbd_mask(path: Path) -> np.ndarray:
    """Class-id map of an SBD ``cls/<id>.mat`` (MATLAB struct GTcls, field Segmentation)."""
    try:
        gt = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
        mask = np.asarray(gt.Segmentation)
    except Exception as err:  # loadmat raises many types for broken files
        raise ValueError(f"{path}: cannot read GTcls.Segmentation ({type(err).__name__}: {err})") from err
    if mask.ndim != 2:
        raise ValueError(f"{path}: GTcls.Segmentation has shape {mask.shape}, expected 2-D")
    if mask.size and int(mask.max()) >= len(VOC_CLASSES):
        raise ValueError(f"{path}: class id {int(mask.max())} outside 0..{len(VOC_CLASSES) - 1}")
    return mask.astype(np.uint8)


def read_xml_labels(path: Path) -> list[int]:
    """Sorted foreground class ids named by the objects of a VOC XML annotation (parts ignored)."""
    try:
        objects = ET.parse(path).getroot().iter("object")
    except ET.ParseError as err:
        raise ValueError(f"{path}: unreadable XML annotation ({err})") from err
    names = [obj.findtext("name", "").strip() for obj in objects]
    unknown = sorted(set(names) - set(VOC_CLASSES[1:]))
    if unknown:
        raise ValueError(f"{path}: unknown class name(s) {unknown}")
    return sorted({VOC_CLASSES.index(n) for n in names})


def _read_png_mask(path: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            mode, mask = img.mode, np.asarray(img)
    except Exception as err:  # PIL raises many types for broken files
        raise ValueError(f"{path}: unreadable mask ({err})") from err
    if mode not in ("P", "L"):
        raise ValueError(f"{path}: mask mode {mode}, expected a palette (P) PNG")
    return mask.astype(np.uint8)


def _convert_one(task: tuple[str, str, str, str, str]) -> tuple[str, str, list[int]]:
    """Worker: write one SegmentationClassAug PNG, return (id, mask source, image labels)."""
    image_id, image, source, annotation, out_png = task
    from_voc = source.endswith(".png")
    mask = _read_png_mask(source) if from_voc else read_sbd_mask(Path(source))
    try:
        with Image.open(image) as img:
            size = img.size  # header only: cheap
    except Exception as err:  # PIL raises many types for broken files
        raise ValueError(f"{image}: unreadable image ({err})") from err
    if (mask.shape[1], mask.shape[0]) != size:
        raise ValueError(f"{source}: mask {mask.shape[1]}x{mask.shape[0]} != image {image} {size[0]}x{size[1]}")
    save_label_png(out_png, mask, voc_palette())
    return image_id, "voc" if from_voc else "sbd", read_xml_labels(Path(annotation))


def _link(target: Path, link: Path, out_root: Path) -> None:
    """Relative symlink if ``target`` lives beside ``out_root`` (moves with it), else absolute."""
    target = Path(os.path.abspath(target))
    base = Path(os.path.abspath(out_root)).parent
    rel = target.is_relative_to(base)
    link.symlink_to(os.path.relpath(target, os.path.abspath(out_root)) if rel else target)


def _plan(voc_root: Path, sbd_root: Path, ids: list[str]) -> list[tuple[str, str, str, str]]:
    """One conversion task per id, VOC's own mask preferred; every missing input named up front."""
    tasks, missing = [], []
    for image_id in ids:
        image = voc_root / "JPEGImages" / f"{image_id}.jpg"
        annotation = voc_root / "Annotations" / f"{image_id}.xml"
        voc_mask = voc_root / "SegmentationClass" / f"{image_id}.png"
        sbd_mask = sbd_root / "cls" / f"{image_id}.mat"
        source = voc_mask if voc_mask.is_file() else sbd_mask
        for path, what in ((image, "image"), (annotation, "annotation"), (source, "mask")):
            if not path.is_file():
                missing.append(f"{path} ({what})" if what != "mask" else f"{voc_mask} or {sbd_mask} (mask)")
        tasks.append((image_id, str(image), str(source), str(annotation)))
    if missing:
        shown = "\n  ".join(missing[:50])
        raise FileNotFoundError(f"{len(missing)} input file(s) missing for the VOC+SBD dataset:\n  {shown}")
    return tasks


def build_aug_dataset(
    voc_root: str | os.PathLike,
    sbd_root: str | os.PathLike,
    out_root: str | os.PathLike,
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Write the VOC 2012 + SBD ``train_aug``/``val`` dataset root at ``out_root`` atomically.

    ``voc_root``/``sbd_root`` may be extraction folders or the inner folders. The
    whole ``out_root`` appears only once every mask and label is written. Returns a
    summary: ids per split and how many masks came from VOC and from SBD.
    """
    voc_root, sbd_root, out_root = find_voc_root(voc_root), find_sbd_root(sbd_root), Path(out_root)
    out_abs = Path(os.path.abspath(out_root))
    for src in (voc_root, sbd_root):
        src_abs = Path(os.path.abspath(src))
        if src_abs.is_relative_to(out_abs) or out_abs.is_relative_to(src_abs):
            raise ValueError(f"{out_root}: output folder overlaps the source {src}; choose another out_root")
    seg_sets = voc_root / "ImageSets" / "Segmentation"
    voc_train, voc_val = _read_ids(seg_sets / "train.txt"), _read_ids(seg_sets / "val.txt")
    sbd_train, sbd_val = _read_ids(sbd_root / "train.txt"), _read_ids(sbd_root / "val.txt")
    train_aug = train_aug_ids(voc_train, voc_val, sbd_train, sbd_val)
    all_ids = sorted(set(train_aug) | set(voc_val))
    tasks = _plan(voc_root, sbd_root, all_ids)
    log(f"VOC+SBD: {len(train_aug)} train_aug, {len(voc_val)} val images -> {out_root}")

    with atomic_dir(out_root) as tmp:
        seg_dir = tmp / "SegmentationClassAug"
        seg_dir.mkdir()
        _link(voc_root / "JPEGImages", tmp / "JPEGImages", out_root)
        _link(voc_root / "Annotations", tmp / "Annotations", out_root)
        (tmp / "SegmentationClass").symlink_to("SegmentationClassAug")
        labels, counts = {}, {"voc": 0, "sbd": 0}
        jobs = [(*task, str(seg_dir / f"{task[0]}.png")) for task in tasks]
        step = max(1, len(jobs) // 10)
        with ProcessPoolExecutor(max(1, workers)) as pool:
            try:
                for n, (image_id, source, image_labels) in enumerate(pool.map(_convert_one, jobs, chunksize=32), 1):
                    labels[image_id], counts[source] = image_labels, counts[source] + 1
                    if n % step == 0 or n == len(jobs):
                        log(f"masks: {n}/{len(jobs)}")
            except BaseException:
                pool.shutdown(cancel_futures=True)  # fail now, not after converting the rest
                raise
        split_dir = tmp / "ImageSets" / "Segmentation"
        split_dir.mkdir(parents=True)
        for split, ids in (("train", voc_train), ("val", voc_val), ("train_aug", train_aug)):
            write_text(split_dir / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        rows = ",\n".join(f"{json.dumps(i)}: {json.dumps(labels[i])}" for i in sorted(labels))
        write_text(tmp / "cls_labels.json", "{\n" + rows + "\n}\n")  # one image per line: greppable

    summary = {
        "train": len(voc_train),
        "val": len(voc_val),
        "train_aug": len(train_aug),
        "masks_from_voc": counts["voc"],
        "masks_from_sbd": counts["sbd"],
    }
    log(f"VOC+SBD dataset ready at {out_root}: {summary}")
    return summary
