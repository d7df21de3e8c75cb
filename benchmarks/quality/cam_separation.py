"""How well each CAM store of a finished run separates an image's objects from its background.

    python benchmarks/quality/cam_separation.py --results results/voc_coseg --root ../shared/data/voc_coseg \\
        [--split train_aug] [--stores cam coattention coattention_multiround]

For every image of the split with a GT mask and every labelled class k that the mask shows, the stored
(max-normalised) map of class k is compared on the pixels of class k (object) and on the background
pixels (GT 0). Printed per store, averaged over these (image, class) pairs:

* the mean map value on the object and on the background, and their ratio;
* the share of background pixels the map puts at or above 0.3 (a typical CAM threshold);
* the ROC AUC of object vs background pixels (1: every object pixel scores above every background
  pixel; 0.5: the map does not tell them apart), which no threshold choice can improve on.

A store whose background scores nearly as high as its objects (AUC near 0.5) can only be turned into labels
at a threshold near 0, i.e. by calling everything foreground: that is what its CAM mIoU then measures.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from wsss_core.cams.store import CAMReader
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.metrics import roc_auc

THRESHOLD = 0.3


def pair_figures(cams: np.ndarray, class_ids, mask: np.ndarray, rng, max_pixels: int) -> list[tuple]:
    """(object mean, background mean, background share >= THRESHOLD, AUC) per labelled class the mask shows."""
    rows = []
    background = cams[:, mask == 0]
    for row, class_id in enumerate(class_ids):
        obj, bg = cams[row][mask == class_id], background[row]
        if not len(obj) or not len(bg):
            continue
        sub_o = obj if len(obj) <= max_pixels else rng.choice(obj, max_pixels, replace=False)
        sub_b = bg if len(bg) <= max_pixels else rng.choice(bg, max_pixels, replace=False)
        rows.append((obj.mean(), bg.mean(), (bg >= THRESHOLD).mean(), roc_auc(sub_o, sub_b)))
    return rows


def summary(rows: list[tuple]) -> dict:
    """The figures of one store, averaged over its (image, class) pairs."""
    obj, bg, bg_on, area = np.asarray(rows).T
    return {
        "pairs": len(rows),
        "object": obj.mean(),
        "background": bg.mean(),
        "ratio": obj.mean() / max(bg.mean(), 1e-9),
        "bg_on": bg_on.mean(),
        "auc": area.mean(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a run's results folder, e.g. results/voc_coseg")
    parser.add_argument("--root", required=True, help="the dataset root (masks)")
    parser.add_argument("--split", default="train_aug")
    parser.add_argument("--stores", nargs="*", help="CAM stores (folders under <results>/cams); default: all")
    parser.add_argument("--max-pixels", type=int, default=20000, help="pixels per side drawn for the AUC")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cam_dir = Path(args.results) / "cams"
    stores = args.stores or sorted(p.name for p in cam_dir.iterdir() if (p / f"{args.split}.h5").is_file())
    dataset = VOCDataset(args.root)
    ids = [i for i in dataset.ids(args.split) if dataset.has_mask(i)]
    print(
        f"{len(ids)} images of {args.root} ({args.split}) with masks; map of each labelled class, object vs background"
    )
    print(
        f"{'store':36s} {'pairs':>6s} {'object':>7s} {'backgr':>7s} {'ratio':>6s} {'bg>=' + str(THRESHOLD):>7s} {'AUC':>6s}"
    )
    paths = [cam_dir / name / f"{args.split}.h5" for name in stores]
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"--stores: no CAM store {path}")
    rngs = [np.random.default_rng(args.seed) for _ in paths]  # each store's draws as if scored alone
    rows = [[] for _ in paths]
    with ExitStack() as stack:
        readers = [stack.enter_context(CAMReader(path)) for path in paths]
        for image_id in ids:
            mask = dataset.load_mask(image_id)  # once for every store
            for reader, rng, store_rows in zip(readers, rngs, rows):
                cams, class_ids = reader.read(image_id)
                store_rows += pair_figures(cams, class_ids, mask, rng, args.max_pixels)
    for name, store_rows in zip(stores, rows):
        r = summary(store_rows)
        print(
            f"{name:36s} {r['pairs']:6d} {r['object']:7.3f} {r['background']:7.3f} {r['ratio']:6.2f} "
            f"{r['bg_on']:7.3f} {r['auc']:6.3f}"
        )


if __name__ == "__main__":
    main()
