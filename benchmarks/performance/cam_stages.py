"""Time the classifier and CAM stages outside Snakemake, on any device, and print the figures.

    python benchmarks/performance/cam_stages.py --configfile config/voc_coseg.yaml --out /tmp/bench [--root DIR]

Runs the same wsss_core functions the rules call (train_classifier -> infer_cams ->
evaluate_cams) with config.yaml deep-merged with the given files, and prints the device,
each stage's wall time and the CAM mIoU at the best threshold. Use it to check the GPU path
and to compare machines; the workflow itself is what produces the figures in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wsss_core.cams.evaluate import evaluate_cams, threshold_grid
from wsss_core.cams.infer import infer_cams
from wsss_core.config_checks import load_config
from wsss_core.train.classifier import train_classifier

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--root", help="dataset root (default: dataset.root of the config)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(REPO / "config.yaml", args.configfile)
    root = args.root or cfg["dataset"]["root"]
    split, out = cfg["dataset"]["train_split"], Path(args.out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")

    start = time.perf_counter()
    train_classifier(
        root,
        split,
        cfg["classifier"],
        out_model=out / "model.pt",
        out_history_csv=out / "history.csv",
        checkpoint_dir=out / "checkpoints",
        threads=args.threads,
    )
    t_train = time.perf_counter() - start
    c = cfg["cams"]
    start = time.perf_counter()
    infer_cams(
        root,
        split,
        out / "model.pt",
        out / "cams.h5",
        scales=c["scales"],
        flip=c["flip"],
        batch_size=c["batch_size"],
        num_workers=c["num_workers"],
        threads=args.threads,
    )
    t_infer = time.perf_counter() - start
    t = c["eval_thresholds"]
    start = time.perf_counter()
    best = evaluate_cams(
        out / "cams.h5",
        root,
        split,
        thresholds=threshold_grid(t["min"], t["max"], t["step"]),
        out_csv=out / "sweep.csv",
        out_png=out / "sweep.png",
        out_best_json=out / "best.json",
        out_per_class_csv=out / "per_class.csv",
        method=cfg["classifier"]["method"],
        summary_row_csv=out / "row.csv",
    )
    t_eval = time.perf_counter() - start
    print(f"train {t_train:.1f} s, CAM inference {t_infer:.1f} s (scales {c['scales']}), evaluation {t_eval:.1f} s")
    print("best:", json.dumps(best))


if __name__ == "__main__":
    main()
