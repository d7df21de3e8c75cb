"""Which maps choose the class of salient pixels best: the saliency recipe per CAM store, multi-label photos apart.

    python benchmarks/quality/class_choice.py --configfile config/voc_coseg.yaml --results results/voc_coseg \\
        [--stores cam coattention coattention_multiround cam_random_walk] [--products cam*cam_random_walk]

With ``saliency_recipe.extent: saliency`` (config/voc_coseg.yaml) the saliency map decides which pixels are
objects and the CAMs only which of the image's classes each salient pixel takes, so on a single-label photo
every CAM store gives the same labels: stores can differ on the multi-label photos only. For each store of
the run (and each product of two stores' max-normalised maps, as random_walk_saliency multiplies the walked
maps into the CAMs) this prints, on the multi-label photos: the share of salient pixels of a labelled object
whose best class (argmax) is the right one, and the recipe's labels' mIoU / coverage there; then the same on
the whole split (the pseudo_labels row of summary.csv when the store is the run's main CAMs). With
``extent: saliency`` an oracle row (every salient object pixel takes its GT class) gives the ceiling of any
class-choice rule.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from wsss_core.cams.store import CAMReader
from wsss_core.config_checks import load_config
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.metrics import confusion_matrix, miou
from wsss_core.plan import Plan
from wsss_core.pseudo.saliency_labels import max_normalised, saliency_pseudo_label
from wsss_core.pseudo.saliency_store import SaliencyReader

REPO = Path(__file__).resolve().parents[2]
ORACLE = "oracle (GT class of each salient object pixel)"


def row_maps(maps: dict, stores: list[str], products: list[tuple[str, str]]) -> dict:
    """Row name -> the (K, H, W) class scores the recipe is given."""
    rows = {s: maps[s] for s in stores}
    for a, b in products:
        rows[f"{a} x {b}"] = max_normalised(maps[a]) * max_normalised(maps[b])
    return rows


def oracle_maps(gt: np.ndarray, class_ids, tie_break: np.ndarray) -> np.ndarray:
    """Scores that make every pixel of a labelled class choose it; elsewhere ``tie_break`` (a store's maps) decides."""
    return np.stack([(gt == c) + 1e-3 * max_normalised(tie_break)[i] for i, c in enumerate(class_ids)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--root", help="dataset root (default: dataset.root of the config)")
    parser.add_argument("--results", required=True, help="results/<name> of a workflow run")
    parser.add_argument("--stores", nargs="*", help="CAM stores of the run to score (default: every one found)")
    parser.add_argument("--products", nargs="*", default=[], help="a*b: the product of two stores' maps")
    args = parser.parse_args()
    cfg = load_config(REPO / "config.yaml", args.configfile, schema=REPO / "config" / "schema.yaml")
    recipe = Plan(cfg).saliency_recipe_settings("saliency")
    dataset = VOCDataset(args.root or cfg["dataset"]["root"])
    split, n = cfg["dataset"]["train_split"], len(dataset.classes)
    cam_dir = Path(args.results) / "cams"
    stores = args.stores or sorted(p.parent.name for p in cam_dir.glob(f"*/{split}.h5"))
    products = [tuple(p.split("*")) for p in args.products]
    for store in {s for pair in products for s in pair} - set(stores):
        stores.append(store)
    missing = [s for s in stores if not (cam_dir / s / f"{split}.h5").is_file()]
    if not stores or missing:
        raise SystemExit(f"no CAM store {missing or ''} under {cam_dir} for split {split}")
    names = [*stores, *(f"{a} x {b}" for a, b in products)]
    if recipe["extent"] == "saliency":
        names.append(ORACLE)
    multi = {name: np.zeros((n, n), np.int64) for name in names}
    whole = {name: np.zeros((n, n), np.int64) for name in names}
    right, salient_objects, photos = dict.fromkeys(names, 0), 0, 0
    valid, valid_multi = 0, 0
    with ExitStack() as stack:
        readers = {s: stack.enter_context(CAMReader(cam_dir / s / f"{split}.h5")) for s in stores}
        saliency = stack.enter_context(SaliencyReader(Path(args.results) / "saliency" / f"{split}.h5"))
        for image_id in dataset.ids(split):
            maps, class_ids = {}, None
            for store, reader in readers.items():
                maps[store], ids = reader.read(image_id)
                if class_ids is not None and list(ids) != list(class_ids):
                    raise SystemExit(f"{image_id}: store {store} holds classes {ids}, another {class_ids}")
                class_ids = list(ids)
            image, gt, sal = dataset.load_image(image_id), dataset.load_mask(image_id), saliency.read(image_id)
            labelled = gt[gt != IGNORE_INDEX]
            valid += labelled.size
            rows = row_maps(maps, stores, products)
            if ORACLE in names:
                rows[ORACLE] = oracle_maps(gt, class_ids, maps[stores[0]])
            is_multi = len(class_ids) > 1
            if is_multi:
                photos += 1
                valid_multi += labelled.size
                objects = np.isin(gt, class_ids) & (sal > recipe["sal_threshold"])
                salient_objects += int(objects.sum())
            for name, scores in rows.items():
                out = saliency_pseudo_label(image, scores, class_ids, sal, **recipe)
                keep = out != IGNORE_INDEX
                cm = confusion_matrix(gt[keep], out[keep], n)
                whole[name] += cm
                if is_multi:
                    multi[name] += cm
                    best = np.asarray(class_ids)[max_normalised(scores).argmax(0)]
                    right[name] += int((best[objects] == gt[objects]).sum())
    print(f"{split} of {dataset.root}, extent {recipe['extent']}: {photos} multi-label photos")
    print(f"{'maps':48s} {'right class':>11s} {'multi: mIoU / cov':>18s} {'all: mIoU / cov':>16s}")
    for name in names:
        print(
            f"{name:48s} {100 * right[name] / max(salient_objects, 1):11.2f} "
            f"{100 * miou(multi[name]):9.2f} / {100 * multi[name].sum() / max(valid_multi, 1):5.2f} "
            f"{100 * miou(whole[name]):7.2f} / {100 * whole[name].sum() / max(valid, 1):5.2f}"
        )


if __name__ == "__main__":
    main()
