"""Score one trained segmentation network under each test-time option and print the figures side by side.

    python benchmarks/quality/test_time_options.py --configfile config/voc_coseg.yaml \\
        --model results/voc_coseg/segmentation/cam+saliency/model.pt --out /tmp/tta [--threads 2]

The options are the ``evaluation`` keys the rule predict_segmentation reads: ``scales`` (multi-scale
softmax average), ``flip`` (average with the mirrored image) and ``crf`` (dense CRF on the averaged
probabilities, with the ``crf`` section of the config). Every row runs predict_split and
evaluate_label_dir, the functions the rules call, on the eval split, and lists mIoU and seconds per
image, so the defaults of config.yaml can be set by measurement.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from wsss_core.config_checks import load_config
from wsss_core.label_maps import evaluate_label_dir
from wsss_core.segmentation.predict import predict_split

REPO = Path(__file__).resolve().parents[2]

# name -> (scales, flip, crf): single scale first, then each option added on its own, then together
OPTIONS = {
    "1.0": ([1.0], False, False),
    "1.0+flip": ([1.0], True, False),
    "0.75,1.0,1.25": ([0.75, 1.0, 1.25], False, False),
    "0.75,1.0,1.25+flip": ([0.75, 1.0, 1.25], True, False),
    "0.5,1.0,1.5,2.0+flip": ([0.5, 1.0, 1.5, 2.0], True, False),
    "1.0+crf": ([1.0], False, True),
    "1.0+flip+crf": ([1.0], True, True),
    "0.75,1.0,1.25+flip+crf": ([0.75, 1.0, 1.25], True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--root", help="dataset root (default: dataset.root of the config)")
    parser.add_argument("--model", required=True, help="model.pt written by rule train_segmentation")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", nargs="*", choices=list(OPTIONS), help="options to run (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(REPO / "config.yaml", args.configfile)
    root, split, out = args.root or cfg["dataset"]["root"], cfg["dataset"]["eval_split"], Path(args.out)
    print(f"model: {args.model}, {split} split of {root}", flush=True)
    rows = []
    for name in args.only or OPTIONS:
        scales, flip, crf = OPTIONS[name]
        d = out / name.replace(",", "_").replace("+", "-")
        start = time.perf_counter()
        result = predict_split(
            args.model,
            root,
            split,
            d / "predictions",
            scales=scales,
            flip=flip,
            crf=cfg["crf"] if crf else None,
            threads=args.threads,
            workers=args.threads,
        )
        seconds = (time.perf_counter() - start) / max(1, result["images"])
        row = evaluate_label_dir(
            d / "predictions",
            root,
            split,
            stage="segmentation",
            method=name,
            out_per_class_csv=d / "per_class.csv",
            summary_row_csv=d / "row.csv",
        )
        rows.append((name, row["mIoU"], seconds))
        print(f"{name}: mIoU {row['mIoU']:.2f}, {seconds:.2f} s per image", flush=True)
    print(f"\n{'option':<26}{'mIoU':>8}{'s/image':>9}")
    for name, miou, seconds in rows:
        print(f"{name:<26}{miou:>8.2f}{seconds:>9.2f}")


if __name__ == "__main__":
    main()
