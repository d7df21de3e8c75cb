"""Time the parse-time dataset fingerprint (wsss_core/data/fingerprint.py) on a VOC-sized dataset folder.

    python benchmarks/performance/dataset_fingerprint.py [--train 10582] [--val 1449] [--image-kb 110] [--mask-kb 3]

Builds a throw-away folder in the VOC layout with ``--train`` + ``--val`` images (random bytes of PASCAL VOC's
mean file sizes: the fingerprint reads bytes, it never decodes) and masks, then times
:func:`update_fingerprints` as Snakemake runs it on every parse: the first parse (every file hashed), a parse
with nothing changed (one ``stat`` per file), and a parse after one val mask changed. Also prints the time of
one ``stat`` sweep alone, the floor of an unchanged parse.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from wsss_core.data.fingerprint import PARTS, update_fingerprints


def build(root: Path, n_train: int, n_val: int, image_kb: int, mask_kb: int) -> list[Path]:
    ids = [f"{i:06d}" for i in range(n_train + n_val)]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    files = []
    for image_id in ids:
        for path, kb in (
            (root / "JPEGImages" / f"{image_id}.jpg", image_kb),
            (root / "SegmentationClass" / f"{image_id}.png", mask_kb),
        ):
            path.write_bytes(os.urandom(kb * 1024))
            files.append(path)
    split_dir = root / "ImageSets" / "Segmentation"
    (split_dir / "train_aug.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (split_dir / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    (root / "cls_labels.json").write_text(json.dumps({i: [1 + k % 20] for k, i in enumerate(ids)}))
    return files


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10582, help="images in the train split (VOC train_aug: 10582)")
    parser.add_argument("--val", type=int, default=1449, help="images in the val split (VOC val: 1449)")
    parser.add_argument("--image-kb", type=int, default=110, help="bytes per image, KiB")
    parser.add_argument("--mask-kb", type=int, default=3, help="bytes per mask, KiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "dataset", Path(tmp) / "fingerprint"
        files = build(root, args.train, args.val, args.image_kb, args.mask_kb)
        size_mb = sum(f.stat().st_size for f in files) / 2**20

        def parse():
            return update_fingerprints(root, "train_aug", "val", out)

        first, _ = timed(parse)
        unchanged, paths = timed(parse)
        before = {p: paths[p].read_text() for p in PARTS}
        (root / "SegmentationClass" / f"{args.train:06d}.png").write_bytes(os.urandom(args.mask_kb * 1024))
        one_mask, paths = timed(parse)
        moved = [p for p in PARTS if paths[p].read_text() != before[p]]
        sweep, _ = timed(lambda: [f.stat() for f in files])
    print(f"dataset: {args.train} train + {args.val} val images and masks, {len(files)} files, {size_mb:.0f} MiB")
    print(f"{'parse':<28}{'seconds':>9}")
    print(f"{'first (hash every file)':<28}{first:>9.2f}")
    print(f"{'nothing changed':<28}{unchanged:>9.2f}")
    print(f"{'one val mask changed':<28}{one_mask:>9.2f}   parts rewritten: {', '.join(moved)}")
    print(f"{'stat of every file alone':<28}{sweep:>9.2f}")


if __name__ == "__main__":
    main()
