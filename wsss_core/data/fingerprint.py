"""Content fingerprints of a user's dataset folder, so that editing a file inside it reruns what reads it.

Snakemake sees a folder input only through the folder's own modification time, which does not change when a
mask is overwritten in place or a line is appended to a split file. So when the workflow is parsed,
:func:`update_fingerprints` digests what each stage reads and writes one small file per part of the dataset:

=============== ===============================================================================
train_labels    the train split's ids and their image-level labels (cls_labels.json entries, XML
                annotations or masks: whichever the dataset takes its labels from)
train_images    the train split's ids and JPEGs
train_masks     the train split's ids and masks (CAM / pseudo-label evaluation, the reference)
eval_labels     the eval split's ids and labels (checked by validate_dataset only)
eval_images     the eval split's ids and JPEGs (prediction)
eval_masks      the eval split's ids and masks (evaluation)
=============== ===============================================================================

Every part also covers classes.txt. A part's file is rewritten only when its digest changes, so its mtime moves
only then: rules take the parts they read as inputs, and an unchanged dataset (or a file touched without a
change) reruns nothing. File digests are cached by (size, mtime) in ``stat_cache.json`` beside the parts, so
a parse rehashes only files whose size or mtime moved and otherwise costs one ``stat`` per listed file.
Standard library only: it runs inside Snakemake's own interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PARTS = ("train_labels", "train_images", "train_masks", "eval_labels", "eval_images", "eval_masks")
CACHE = "stat_cache.json"


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def _write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` through a temporary sibling, unless the file already holds it."""
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


class _Digests:
    """File digests, reused from the cache while a file's (size, mtime_ns) is unchanged."""

    def __init__(self, cache_path: Path, workers: int = 8):
        self.path, self.workers = cache_path, workers
        try:
            self.old = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            self.old = {}
        self.new: dict[str, list] = {}

    def of(self, paths: list[str]) -> dict[str, str]:
        """The digest of each path ("absent" for a missing file, "unreadable" for one that cannot be read)."""
        out, todo = {}, []
        for path in dict.fromkeys(paths):
            try:
                st = os.stat(path)
            except OSError:
                out[path] = "absent"
                continue
            cached = self.old.get(path) or self.new.get(path)
            if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
                out[path] = cached[2]
                self.new[path] = cached
            else:
                todo.append((path, [st.st_size, st.st_mtime_ns]))

        def digest(item):
            try:
                return _file_digest(item[0])
            except OSError:
                return None

        with ThreadPoolExecutor(self.workers) as pool:  # hashlib releases the GIL on large buffers
            for (path, stat), value in zip(todo, pool.map(digest, todo)):
                out[path] = value or "unreadable"
                if value:
                    self.new[path] = [*stat, value]
        return out

    def save(self) -> None:
        if self.new == self.old:
            return
        _write_if_changed(self.path, json.dumps(self.new, sort_keys=True, separators=(",", ":")))


def _split_ids(path: str) -> list[str]:
    """The ids a split file lists, as wsss_core.data.voc_layout reads them (BOM stripped, first word per line)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return []
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _safe(image_id: str) -> bool:
    """Ids that stay inside the dataset's folders; others are left to validate_dataset to report."""
    return bool(image_id) and not ({"/", "\\", "\0"} & set(image_id)) and not image_id.startswith(".")


def _label_entries(root: str, ids: list[str], digests: _Digests) -> list:
    """What decides each id's image-level labels, by the dataset's label source."""
    labels_json = os.path.join(root, "cls_labels.json")
    if os.path.isfile(labels_json):
        try:
            with open(labels_json, encoding="utf-8-sig") as f:
                table = json.load(f)
        except (OSError, ValueError):
            table = None
        if not isinstance(table, dict):  # unreadable: the whole file stands for every id's labels
            return [["cls_labels.json", digests.of([labels_json])[labels_json]]]
        return [["cls_labels.json", {i: table.get(i) for i in ids}]]
    folder, ext = (
        ("Annotations", "xml") if os.path.isdir(os.path.join(root, "Annotations")) else ("SegmentationClass", "png")
    )
    paths = [os.path.join(root, folder, f"{i}.{ext}") for i in ids]
    found = digests.of(paths)
    return [[folder, [found[p] for p in paths]]]


def dataset_digests(root: str | os.PathLike, train_split: str, eval_split: str, cache_path: Path) -> dict[str, dict]:
    """{part: {"digest", "images"}} for the parts in :data:`PARTS` (see the module docstring)."""
    root = str(root)
    digests = _Digests(cache_path)
    classes = os.path.join(root, "classes.txt")
    common = [["classes.txt", digests.of([classes])[classes]]]
    parts = {}
    for prefix, split in (("train", train_split), ("eval", eval_split)):
        split_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        ids = [i for i in _split_ids(split_file) if _safe(i)]
        head = common + [["split", split, digests.of([split_file])[split_file]]]
        images = [os.path.join(root, "JPEGImages", f"{i}.jpg") for i in ids]
        masks = [os.path.join(root, "SegmentationClass", f"{i}.png") for i in ids]
        found = digests.of(images + masks)
        contents = {
            "labels": head + _label_entries(root, ids, digests),
            "images": head + [[i, found[p]] for i, p in zip(ids, images)],
            "masks": head + [[i, found[p]] for i, p in zip(ids, masks)],
        }
        for kind, entries in contents.items():
            text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
            parts[f"{prefix}_{kind}"] = {"digest": hashlib.sha256(text.encode()).hexdigest(), "images": len(ids)}
    digests.save()
    return parts


def update_fingerprints(
    root: str | os.PathLike, train_split: str, eval_split: str, out_dir: str | os.PathLike
) -> dict[str, Path]:
    """Write ``out_dir/<part>.json`` for each part whose digest changed; return every part's path."""
    root, out_dir = Path(root), Path(out_dir)
    parts = dataset_digests(root, train_split, eval_split, out_dir / CACHE)
    paths = {}
    for part, value in parts.items():
        paths[part] = out_dir / f"{part}.json"
        _write_if_changed(paths[part], json.dumps({"root": str(root.resolve()), **value}, indent=1) + "\n")
    return paths
