"""Time the segmentation stages outside Snakemake, from an existing pseudo-label folder, and print the figures.

    python benchmarks/performance/segmentation_stages.py --configfile config/voc_coseg.yaml \\
        --pseudo-labels results/voc_coseg/pseudo_labels/cam/train_aug --out /tmp/seg_bench [--root DIR]

Runs the functions the rules call - train_segmentation -> predict_split -> evaluate_label_dir -
once on the pseudo labels and once on the GT masks (the fully-supervised reference), with
config.yaml deep-merged with the given files, and prints each stage's wall time, both mIoUs
and their ratio. Use it to compare machines or to rerun the last stages on another device;
the workflow itself is what the demo figures in docs/results.md come from.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wsss_core.config_checks import load_config
from wsss_core.label_maps import evaluate_label_dir
from wsss_core.segmentation.predict import predict_split
from wsss_core.train.segmentation import train_segmentation

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--root", help="dataset root (default: dataset.root of the config)")
    parser.add_argument("--pseudo-labels", required=True, help="folder of <id>.png pseudo labels")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(REPO / "config.yaml", args.configfile)
    root, out = args.root or cfg["dataset"]["root"], Path(args.out)
    train_split, eval_split = cfg["dataset"]["train_split"], cfg["dataset"]["eval_split"]
    ev = cfg["evaluation"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")
    rows = {}
    for run, labels in (("pseudo", args.pseudo_labels), ("fully_supervised", None)):
        d = out / run
        start = time.perf_counter()
        train_segmentation(
            root,
            train_split,
            cfg["segmentation"],
            label_dir=labels,
            out_model=d / "model.pt",
            out_history_csv=d / "history.csv",
            checkpoint_dir=d / "checkpoints",
            threads=args.threads,
        )
        t_train = time.perf_counter() - start
        start = time.perf_counter()
        predict_split(
            d / "model.pt",
            root,
            eval_split,
            d / "predictions",
            scales=ev["scales"],
            flip=ev["flip"],
            crf=cfg["crf"] if ev["crf"] else None,
            threads=args.threads,
            workers=args.threads,
        )
        t_predict = time.perf_counter() - start
        rows[run] = evaluate_label_dir(
            d / "predictions",
            root,
            eval_split,
            stage="segmentation",
            method=run,
            out_per_class_csv=d / "per_class.csv",
            summary_row_csv=d / "row.csv",
        )
        print(
            f"{run}: train {t_train:.1f} s, predict {t_predict:.1f} s, {eval_split} mIoU {rows[run]['mIoU']:.2f}",
            flush=True,
        )
    ratio = 100 * rows["pseudo"]["mIoU"] / rows["fully_supervised"]["mIoU"]
    print(
        json.dumps(
            {run: round(row["mIoU"], 2) for run, row in rows.items()} | {"pct_of_fully_supervised": round(ratio, 1)}
        )
    )


if __name__ == "__main__":
    main()
