"""The saliency recipe on the CAMs and on the random walk's maps, side by side, on the training photos.

    python benchmarks/quality/walked_saliency_labels.py --configfile config/voc_coseg.yaml \\
        --results results/voc_coseg --cams cam [--thresholds 0.5 0.7]

Reads the CAM store ``<results>/cams/<cams>``, the walked store ``<cams>_random_walk`` and the saliency
store a workflow run left (one with ``random_walk_saliency`` among the recipes) and scores against the GT
masks (void skipped) the labels of :func:`saliency_pseudo_label` with config's ``saliency_recipe`` on the
CAMs (the ``saliency`` row of summary.csv), on the walked maps alone, also with other ``cam_threshold``
values (their own best threshold included, when their evaluation left one: a walked map is flatter than a
CAM, so MCIS's 0.3 reaches further), and with the walked maps multiplied into the CAMs' class scores (the
``random_walk_saliency`` recipe). The random walk earns a place in the saliency recipe only if a walked row
beats the CAM row at no lower coverage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wsss_core.cams.store import CAMReader
from wsss_core.config_checks import load_config
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.metrics import confusion_matrix, miou
from wsss_core.pseudo.saliency_labels import saliency_pseudo_label
from wsss_core.pseudo.saliency_store import SaliencyReader

REPO = Path(__file__).resolve().parents[2]


def rows_for(recipe: dict, walked_best: float | None, thresholds: list[float]) -> dict:
    """Row name -> (the maps given as CAMs: "cams" | "walked", recipe settings, multiply the walked maps in?)."""
    rows = {
        "saliency (the CAMs)": ("cams", recipe, False),
        "the walked maps alone": ("walked", recipe, False),
    }
    if recipe["extent"] == "cams":
        extra = list(thresholds) + ([walked_best] if walked_best is not None else [])
        for t in extra:
            best = " (walked store's best)" if t == walked_best else ""
            rows[f"the walked maps alone, cam_threshold {t:.2f}{best}"] = (
                "walked",
                recipe | {"cam_threshold": float(t)},
                False,
            )
    rows["random_walk_saliency (CAMs x walked maps)"] = ("cams", recipe, True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--root", help="dataset root (default: dataset.root of the config)")
    parser.add_argument("--results", required=True, help="results/<name> of a workflow run with a walked store")
    parser.add_argument("--cams", required=True, help="the CAM store the walk started from (main CAMs)")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.5, 0.7], help="extra walked cam_threshold")
    args = parser.parse_args()
    cfg = load_config(REPO / "config.yaml", args.configfile)
    dataset = VOCDataset(args.root or cfg["dataset"]["root"])
    split, n = cfg["dataset"]["train_split"], len(dataset.classes)
    results, walked = Path(args.results), f"{args.cams}_random_walk"
    recipe = {k: v for k, v in cfg["pseudo_labels"]["saliency_recipe"].items() if k != "crf"}
    best_json = results / "cams" / walked / "eval" / "best_threshold.json"
    walked_best = json.loads(best_json.read_text())["threshold"] if best_json.is_file() else None
    rows = rows_for(recipe, walked_best, args.thresholds)
    conf = {name: np.zeros((n, n), np.int64) for name in rows}
    valid = 0
    with (
        CAMReader(results / "cams" / args.cams / f"{split}.h5") as cam_store,
        CAMReader(results / "cams" / walked / f"{split}.h5") as walked_store,
        SaliencyReader(results / "saliency" / f"{split}.h5") as saliency,
    ):
        for image_id in dataset.ids(split):
            cams, class_ids = cam_store.read(image_id)
            walked_maps, walked_ids = walked_store.read(image_id)
            if list(walked_ids) != list(class_ids):
                raise ValueError(
                    f"{image_id}: the walked store's classes {walked_ids} differ from the CAMs' {class_ids}"
                )
            image, gt, sal = dataset.load_image(image_id), dataset.load_mask(image_id), saliency.read(image_id)
            valid += int((gt != IGNORE_INDEX).sum())
            maps = {"cams": cams, "walked": walked_maps}
            for name, (given, settings, multiply) in rows.items():
                walk = walked_maps if multiply else None
                out = saliency_pseudo_label(image, maps[given], class_ids, sal, **settings, walked=walk)
                keep = out != IGNORE_INDEX
                conf[name] += confusion_matrix(gt[keep], out[keep], n)
    print(f"{split} of {dataset.root}, extent {recipe['extent']}: mIoU over labelled pixels / coverage (%)")
    for name in rows:
        print(f"{name:56s} {100 * miou(conf[name]):6.2f} / {100 * conf[name].sum() / max(valid, 1):6.2f}")


if __name__ == "__main__":
    main()
