"""Pseudo-label rules on the training photos, split into single-label and multi-label photos, side by side.

    python benchmarks/quality/saliency_label_rules.py --configfile config/voc_coseg.yaml \\
        --results results/voc_coseg [--cams cam]

Reads the CAM store and the saliency store a workflow run left in ``--results`` and scores, against the
GT masks of the training split (void skipped), the labels of :func:`saliency_only_label` (no CAM), of
the saliency recipe as configured and with ``extent: saliency``, of that recipe with the salient pixels
no CAM reaches (best max-normalised CAM at most a floor) void, and of no-CAM controls that void an
uncertain saliency band instead. A CAM rule earns its place only if it beats the no-CAM control at equal
coverage: voiding any uncertain pixels raises pseudo-label mIoU, so mIoU alone cannot tell whether the
CAMs carry information the saliency map lacks. Rows also count the images voided whole (rule 7).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from wsss_core.cams.store import CAMReader
from wsss_core.config_checks import load_config
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.metrics import confusion_matrix, miou
from wsss_core.pseudo.saliency_labels import saliency_only_label, saliency_pseudo_label
from wsss_core.pseudo.saliency_store import SaliencyReader

REPO = Path(__file__).resolve().parents[2]


def band_control(lo: float, hi: float):
    """No CAM: the saliency_only labels with saliency in (lo, hi) void."""

    def label(image, cams, class_ids, sal):
        out = saliency_only_label(image, cams, class_ids, sal)
        out[(sal > lo) & (sal < hi)] = IGNORE_INDEX
        return out

    return label


def cam_floor(recipe: dict, floor: float):
    """The recipe's labels with every class pixel void where the image's best max-normalised CAM <= floor."""

    def label(image, cams, class_ids, sal):
        out = saliency_pseudo_label(image, cams, class_ids, sal, **recipe)
        peaks = cams.reshape(len(class_ids), -1).max(1).reshape(-1, 1, 1)
        best = np.where(peaks > 0, cams / np.maximum(peaks, 1e-12), 0.0).max(0)
        out[(out != 0) & (best <= floor)] = IGNORE_INDEX
        return out

    return label


def candidates(recipe: dict) -> dict:
    recipe = {k: v for k, v in recipe.items() if k != "crf"}
    extent = recipe | {"extent": "saliency"}
    rows = {
        "saliency_only (no CAM)": saliency_only_label,
        f"saliency recipe, extent {recipe['extent']} (config)": partial(saliency_pseudo_label, **recipe),
    }
    if recipe["extent"] != "saliency":
        rows["saliency recipe, extent saliency"] = partial(saliency_pseudo_label, **extent)
    for floor in (0.05, 0.1, 0.2):
        rows[f"extent saliency + void where CAMs <= {floor}"] = cam_floor(extent, floor)
    for lo, hi in ((0.5, 0.9), (0.5, 0.97), (0.3, 0.95)):
        rows[f"no-CAM control: void {lo} < saliency < {hi}"] = band_control(lo, hi)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--root", help="dataset root (default: dataset.root of the config)")
    parser.add_argument("--results", required=True, help="results/<name> of a workflow run with CAMs and saliency")
    parser.add_argument("--cams", default="cam", help="CAM store name under <results>/cams (default: cam)")
    args = parser.parse_args()
    cfg = load_config(REPO / "config.yaml", args.configfile)
    dataset = VOCDataset(args.root or cfg["dataset"]["root"])
    split, n = cfg["dataset"]["train_split"], len(dataset.classes)
    rows = candidates(cfg["pseudo_labels"]["saliency_recipe"])
    conf = {(name, group): np.zeros((n, n), np.int64) for name in rows for group in ("single", "multi")}
    voided = dict.fromkeys(rows, 0)
    counts, valid = {"single": 0, "multi": 0}, {"single": 0, "multi": 0}
    results = Path(args.results)
    with (
        CAMReader(results / "cams" / args.cams / f"{split}.h5") as cams,
        SaliencyReader(results / "saliency" / f"{split}.h5") as saliency,
    ):
        for image_id in dataset.ids(split):
            maps, class_ids = cams.read(image_id)
            if not class_ids:
                continue
            image, gt, sal = dataset.load_image(image_id), dataset.load_mask(image_id), saliency.read(image_id)
            group = "single" if len(class_ids) == 1 else "multi"
            counts[group] += 1
            valid[group] += int((gt != IGNORE_INDEX).sum())
            for name, label in rows.items():
                out = label(image, maps, class_ids, sal)
                voided[name] += int((out == IGNORE_INDEX).all())
                keep = out != IGNORE_INDEX
                conf[name, group] += confusion_matrix(gt[keep], out[keep], n)
    print(
        f"{split} of {dataset.root}: {counts['single']} single-label, {counts['multi']} multi-label photos; "
        "mIoU over labelled pixels / coverage of the GT-valid pixels (%)"
    )
    print(f"{'rule':56s} {'single mIoU':>11s} {'cover':>6s} {'multi mIoU':>10s} {'cover':>6s} {'all-void':>8s}")
    for name in rows:
        cells = []
        for group in ("single", "multi"):
            c = conf[name, group]
            cells += [
                f"{100 * miou(c):11.2f}" if group == "single" else f"{100 * miou(c):10.2f}",
                f"{100 * c.sum() / max(valid[group], 1):6.2f}",
            ]
        print(f"{name:56s} {' '.join(cells)} {voided[name]:8d}")


if __name__ == "__main__":
    main()
