"""AffinityNet recipes side by side, end to end: confident labels -> training -> random walk -> pseudo labels.

    python benchmarks/quality/affinity_recipes.py --configfile config/voc_coseg.yaml \\
        --cams results/voc_coseg/cams/cam/train_aug.h5 --saliency results/voc_coseg/saliency/train_aug.h5 \\
        --candidate 'psa={saliency_gate: null}' --candidate 'gated={saliency_gate: 0.5}' --out /tmp/affinity_recipes

Starts from a workflow run's CAM store and saliency store of the training split and runs, per candidate (the
config's ``affinity`` section with its YAML overrides), what rules affinity_labels, train_affinity, random_walk,
evaluate_cams, make_pseudo_labels and make_saliency_pseudo_labels run, with the same functions and settings.
Prints one row per candidate beside the rows the CAMs give without AffinityNet:

* labels: share of the pixels in the confident foreground / background zones and the share of those whose
  label agrees with the mask (how much the network is taught, and how much of it is true);
* val AUC: ROC AUC of same-label against different-label pairs on the eval split's photos, labelled by their
  masks (photos AffinityNet never saw; ``affinity_pairs.py`` prints the details);
* walked CAMs: CAM mIoU at the best threshold (as rule evaluate_cams), random_walk and random_walk_saliency:
  pseudo-label mIoU / coverage (as rule evaluate_pseudo_labels) on the training photos.

Each candidate's files stay under ``--out/<name>`` (labels, model, walked store, pseudo labels); a step whose
output is there is not redone, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from wsss_core.cams.evaluate import sweep, threshold_grid
from wsss_core.config_checks import load_config, merged
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.devices import select_device
from wsss_core.label_maps import evaluate_label_dir
from wsss_core.models.affinitynet import load_affinitynet
from wsss_core.plan import Plan
from wsss_core.pseudo.labels import make_pseudo_labels
from wsss_core.pseudo.saliency_labels import make_saliency_pseudo_labels
from wsss_core.refine.affinity_labels import make_affinity_labels
from wsss_core.refine.propagate import pair_separation, propagate_split
from wsss_core.train.affinity import CONFIG_KEYS, train_affinity

REPO = Path(__file__).resolve().parents[2]


def zone_figures(label_dir: Path, ds: VOCDataset, ids) -> dict:
    """Share of the (non-void-in-GT) pixels in each confident zone, and the share of those the mask agrees with."""
    total, zones = 0, {"fg": [0, 0], "bg": [0, 0]}
    for image_id in ids:
        labels = np.asarray(Image.open(label_dir / f"{image_id}.png"))
        mask = ds.load_mask(image_id)
        valid = mask != IGNORE_INDEX
        total += int(valid.sum())
        for zone, where in (("fg", (labels != 0) & (labels != IGNORE_INDEX)), ("bg", labels == 0)):
            where &= valid
            zones[zone][0] += int(where.sum())
            zones[zone][1] += int((mask[where] == labels[where]).sum())
    return {f"{z}_{k}": v for z, (n, ok) in zones.items() for k, v in (("share", n / total), ("right", ok / max(n, 1)))}


def best_cams(store: Path, ds: VOCDataset, ids, config: dict, workers: int) -> tuple[float, float]:
    """(CAM mIoU, threshold) at the best threshold of the config's sweep, as rule evaluate_cams."""
    grid = config["cams"]["eval_thresholds"]
    table = sweep(str(store), ds, ids, threshold_grid(grid["min"], grid["max"], grid["step"]), workers=workers)
    row = table.iloc[int(table["mIoU"].to_numpy().argmax())]
    return float(row["mIoU"]), float(row["threshold"])


def scored(folder: Path, root: Path, split: str, make) -> tuple[float, float]:
    """(mIoU, coverage) of a pseudo-label folder, made by ``make(folder)`` unless it is there."""
    if not folder.exists():
        make(folder)
    row = evaluate_label_dir(
        folder,
        root,
        split,
        stage="pseudo_labels",
        method=folder.name,
        out_per_class_csv=folder.with_suffix(".per_class.csv"),
        summary_row_csv=folder.with_suffix(".row.csv"),
        workers=2,
    )
    return float(row["mIoU"]), float(row["coverage"])


def label_rows(
    store: Path, best: float, config: dict, args, ds, ids, out: Path, threshold, walked: Path | None = None
) -> dict:
    """Confident-rule and saliency-recipe labels of a CAM store, scored; with ``walked`` (the walk of
    ``args.cams``), those of rules make_pseudo_labels (random_walk) and make_saliency_pseudo_labels
    (random_walk_saliency: the walk multiplied into the CAMs)."""
    pseudo, recipe = config["pseudo_labels"], config["pseudo_labels"]["saliency_recipe"]
    thr = best if threshold == "best" else float(threshold)
    crf = config["crf"] if pseudo["crf"] else None
    sal_crf = config["crf"] if recipe["crf"] else None
    sal_settings = Plan(config).saliency_recipe_settings("saliency")  # rule make_saliency_pseudo_labels' params
    return {
        "confident": scored(
            out / "confident",
            args.root,
            args.split,
            lambda f: make_pseudo_labels(
                store,
                args.root,
                args.split,
                f,
                threshold=thr,
                fg_margin=pseudo["fg_margin"],
                bg_margin=pseudo["bg_margin"],
                crf=crf,
                workers=args.workers,
            ),
        ),
        "saliency": scored(
            out / "saliency",
            args.root,
            args.split,
            lambda f: make_saliency_pseudo_labels(
                store if walked is None else args.cams,
                args.saliency,
                args.root,
                args.split,
                f,
                **sal_settings,
                crf=sal_crf,
                walked_h5=walked,
                workers=args.workers,
            ),
        ),
    }


def run_candidate(name: str, aff: dict, config: dict, args, ds: VOCDataset, ids, device) -> dict:
    out = args.out / name
    start = time.perf_counter()
    labels = out / "labels"
    if not labels.exists():
        make_affinity_labels(
            args.cams,
            args.root,
            args.split,
            labels,
            low_alpha=aff["low_alpha"],
            high_alpha=aff["high_alpha"],
            crf=config["crf"] if aff["crf"] else None,
            saliency_gate=aff["saliency_gate"],
            saliency_h5=None if aff["saliency_gate"] is None else args.saliency,
            workers=args.workers,
        )
    row = zone_figures(labels, ds, ids)
    model_path = out / "model.pt"
    if not model_path.exists():
        train_affinity(
            args.root,
            args.split,
            {k: aff[k] for k in CONFIG_KEYS},
            label_dir=labels,
            out_model=model_path,
            out_history_csv=out / "train_history.csv",
            checkpoint_dir=out / "checkpoints",
            threads=args.workers,
        )
    model, meta = load_affinitynet(model_path, device)
    eval_ids = ds.ids(args.eval_split)
    row["auc"] = pair_separation(model, meta["radius"], ds, eval_ids, device)["auc"]
    walked = out / "walked.h5"
    if not walked.exists():
        propagate_split(
            args.cams,
            args.root,
            args.split,
            model_path,
            None,
            walked,
            beta=aff["beta"],
            logt=aff["logt"],
            workers=args.workers,
            threads=1,
        )
    row["walked"] = best_cams(walked, ds, ids, config, args.workers)
    row.update(label_rows(walked, row["walked"][1], config, args, ds, ids, out, aff["threshold"], walked=walked))
    row["seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", action="append", default=[], help="config files merged over config.yaml")
    parser.add_argument("--cams", type=Path, required=True, help="a workflow run's CAM store of the split")
    parser.add_argument("--saliency", type=Path, required=True, help="the run's saliency store of the split")
    parser.add_argument("--candidate", action="append", required=True, help="NAME=YAML overrides of affinity")
    parser.add_argument("--out", type=Path, required=True, help="work folder (kept: reruns resume)")
    parser.add_argument("--root", type=Path, help="dataset root (default: the config's dataset.root)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    args = parser.parse_args()

    config = load_config(REPO / "config.yaml", args.configfile, REPO / "config" / "schema.yaml")
    args.root = args.root or (REPO / config["dataset"]["root"])
    args.split, args.eval_split = config["dataset"]["train_split"], config["dataset"]["eval_split"]
    torch.set_num_threads(args.workers)
    device = select_device(args.device)
    ds = VOCDataset(args.root)
    ids = ds.ids(args.split)

    cam_miou, cam_thr = best_cams(args.cams, ds, ids, config, args.workers)
    base = label_rows(
        args.cams, cam_thr, config, args, ds, ids, args.out / "cams", config["pseudo_labels"]["threshold"]
    )
    rows = []
    for spec in args.candidate:
        name, _, text = spec.partition("=")
        override = yaml.safe_load(text) or {}
        unknown = sorted(set(override) - set(config["affinity"])) if isinstance(override, dict) else []
        if not name or not isinstance(override, dict) or unknown:
            parser.error(f"--candidate {spec!r}: expected NAME={{affinity keys: values}}; unknown keys {unknown}")
        aff = merged(config["affinity"], override)
        rows.append((name, run_candidate(name, aff, config, args, ds, ids, device)))

    print(
        f"{len(ids)} photos of {args.root} ({args.split}); val AUC on {args.eval_split}; mIoU % (threshold / coverage %)"
    )
    print(
        f"CAMs: {cam_miou:.2f} ({cam_thr:.2f}); confident {base['confident'][0]:.2f} / {base['confident'][1]:.1f}; "
        f"saliency {base['saliency'][0]:.2f} / {base['saliency'][1]:.1f}"
    )
    print(
        f"{'candidate':<14} {'fg share':>8} {'fg right':>8} {'bg share':>8} {'bg right':>8} {'val AUC':>7} "
        f"{'walked CAMs':>13} {'random_walk':>13} {'rw_saliency':>13} {'seconds':>8}"
    )
    for name, r in rows:
        walked = f"{r['walked'][0]:.2f} ({r['walked'][1]:.2f})"
        rw, rws = (f"{r[k][0]:.2f} / {r[k][1]:.1f}" for k in ("confident", "saliency"))
        print(
            f"{name:<14} {r['fg_share']:>8.3f} {r['fg_right']:>8.3f} {r['bg_share']:>8.3f} {r['bg_right']:>8.3f} "
            f"{r['auc']:>7.3f} {walked:>13} {rw:>13} {rws:>13} {r['seconds']:>8.0f}"
        )


if __name__ == "__main__":
    main()
