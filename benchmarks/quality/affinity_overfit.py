"""Can AffinityNet separate the pairs of a few photos it is trained on? Training recipes side by side at an equal
number of steps.

    python benchmarks/quality/affinity_overfit.py --root ../shared/data/voc_coseg \\
        --candidate 'sgd={optimizer: sgd, lr: 0.01}' --candidate 'adamw={optimizer: adamw, lr: 0.0003}' \\
        [--photos 16 --size 96 --epochs 150 --batch-size 8 --log-every 50]

The first ``--photos`` photos of the train split, resized to ``--size`` px (long side) and seen whole (no
rescale, flip or jitter: fixed inputs to memorise), with their ground-truth masks as the labels. Each candidate
is the config's ``affinity`` section (config.yaml + ``--configfile``s) with this setting and its YAML overrides,
trained from the same seed for ``--epochs`` epochs. Per candidate: training seconds, and after training the mean
affinity of background-background, same-class and different-label pairs of those photos (the sanity check of
tests/test_affinity.py wants > 0.9, > 0.9 and < 0.1) with their ROC AUC; also the training loss terms every
``--log-every`` epochs, to show how fast each recipe gets there.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch
import yaml

from wsss_core.config_checks import load_config, merged
from wsss_core.data.subset import resized_subset
from wsss_core.models.affinitynet import load_affinitynet
from wsss_core.refine.propagate import pair_separation
from wsss_core.train.affinity import CONFIG_KEYS, train_affinity

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="dataset in the VOC layout, with masks")
    parser.add_argument("--configfile", action="append", default=[], help="config files merged over config.yaml")
    parser.add_argument("--candidate", action="append", required=True, help="NAME=YAML overrides of affinity")
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--size", type=int, default=96, help="long side of the photos, px (also the crop)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--log-every", type=int, default=50, help="print the loss terms every N epochs")
    args = parser.parse_args()

    config = load_config(REPO / "config.yaml", args.configfile, REPO / "config" / "schema.yaml")
    base = {k: config["affinity"][k] for k in CONFIG_KEYS}
    fixed = dict(
        crop_size=args.size,
        scale_range=[1.0, 1.0],
        flip=False,
        color_jitter=0.0,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = resized_subset(args.root, tmp / "photos", split="train", count=args.photos, long_side=args.size)
        for spec in args.candidate:
            name, _, overrides = spec.partition("=")
            cfg = merged({**base, **fixed}, yaml.safe_load(overrides) or {})
            out = tmp / name
            start = time.time()
            train_affinity(
                photos.root,
                "train",
                cfg,
                label_dir=photos.root / "SegmentationClass",
                out_model=out / "model.pt",
                out_history_csv=out / "history.csv",
                checkpoint_dir=out / "checkpoints",
                threads=2,
            )
            seconds = time.time() - start
            with open(out / "history.csv") as f:
                history = list(csv.DictReader(f))
            model, meta = load_affinitynet(out / "model.pt")
            figures = pair_separation(model, meta["radius"], photos, photos.ids("train"), "cpu")
            means = {kind: figures[kind] for kind in ("bg_pos", "fg_pos", "neg")}
            rows.append((name, cfg, seconds, history, means, figures["auc"]))
            print(f"{name}: {means} in {seconds:.0f} s", flush=True)

    print(f"\n{args.photos} photos of {args.root} at {args.size} px, fixed inputs, {args.epochs} epochs each")
    print(f"{'recipe':<12} {'train s':>8} {'bg-bg':>6} {'same-k':>6} {'diff':>6} {'AUC':>6}   overrides")
    for name, cfg, seconds, _, means, auc in rows:
        changed = {k: v for k, v in cfg.items() if base.get(k) != v and k not in fixed}
        print(
            f"{name:<12} {seconds:>8.0f} {means['bg_pos']:>6.3f} {means['fg_pos']:>6.3f} {means['neg']:>6.3f} "
            f"{auc:>6.3f}   {changed}"
        )
    print("\nloss terms (bg_pos / fg_pos / neg) by epoch")
    for name, _, _, history, _, _ in rows:
        marks = [r for r in history if int(r["epoch"]) % args.log_every == 0 or r["epoch"] == "1"]
        print(
            f"{name:<12} "
            + "  ".join(
                f"{r['epoch']}: {float(r['loss_bg_pos']):.2f}/{float(r['loss_fg_pos']):.2f}/{float(r['loss_neg']):.2f}"
                for r in marks
            )
        )


if __name__ == "__main__":
    main()
