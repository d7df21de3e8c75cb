"""A small resized copy of a dataset in the VOC layout, for quick checks that need real photos.

The first ``count`` images of a split, each resized so that its long side is ``long_side`` pixels (bilinear for
the photo, nearest for the mask), with their image-level labels, written as a new dataset in the VOC layout
whose split ``split`` lists them. Sanity checks that train a network to memorise a few photos
(tests/test_affinity.py, benchmarks/quality/affinity_overfit.py) use it: small photos make each step cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from wsss_core.data.voc_layout import VOCDataset, voc_palette
from wsss_core.fileio import save_label_png


def resized_subset(source, dest, *, split: str, count: int, long_side: int) -> VOCDataset:
    """Write the resized copy of ``source``'s first ``count`` images of ``split`` to ``dest`` (which must not
    exist) and return it as a dataset."""
    src, dest = VOCDataset(source), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; a subset is written to a new folder")
    if count < 1 or long_side < 1:
        raise ValueError(f"need count >= 1 and long_side >= 1, got {count} and {long_side}")
    ids = src.ids(split)[:count]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (dest / folder).mkdir(parents=True)
    for image_id in ids:
        image = Image.fromarray(src.load_image(image_id))
        size = tuple(max(1, round(side * long_side / max(image.size))) for side in image.size)
        image.resize(size, Image.BILINEAR).save(dest / "JPEGImages" / f"{image_id}.jpg", quality=95)
        mask = Image.fromarray(src.load_mask(image_id)).resize(size, Image.NEAREST)
        save_label_png(dest / "SegmentationClass" / f"{image_id}.png", np.asarray(mask), voc_palette())
    (dest / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    labels = {image_id: list(src.labels(image_id)) for image_id in ids}
    (dest / "cls_labels.json").write_text(json.dumps(labels))
    return VOCDataset(dest)
