"""Compare segmentation training recipes at an equal number of steps and print each one's val mIoU.

    python benchmarks/quality/segmentation_recipes.py --configfile config/voc_coseg.yaml --out /tmp/seg_recipes \\
        [--labels results/voc_coseg/pseudo_labels/cam/confident/train_aug] [--only sgd_poly adamw_cosine] \\
        [--epochs 2] [--crop 192] [--threads 2]

Every candidate trains the workflow's segmentation network (train_segmentation, the ``segmentation`` section of
config.yaml deep-merged with the given files, then the candidate's overrides) on the train split's GT masks, or
on ``--labels``, for the same epochs and batch size - the same steps - with the same seed; predict_split and
evaluate_label_dir then score it on the eval split as rule evaluate_segmentation does. The table lists steps,
training time and mIoU side by side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from wsss_core.config_checks import load_config
from wsss_core.label_maps import evaluate_label_dir
from wsss_core.segmentation.predict import predict_split
from wsss_core.train.segmentation import train_segmentation

REPO = Path(__file__).resolve().parents[2]

ADAMW = {"optimizer": "adamw", "lr": 0.0001, "new_layer_lr_mult": 10, "weight_decay": 0.0001, "lr_schedule": "cosine"}
CANDIDATES = {
    "sgd_poly": {},  # the configured recipe (the papers' SGD + poly)
    "sgd_poly_warmup": {"warmup_steps": "10%"},
    "sgd_lr0.003_poly": {"lr": 0.003},
    "adamw_cosine": ADAMW,
    "adamw_cosine_warmup": {**ADAMW, "warmup_steps": "10%"},
    "adamw_lr3e-4_cosine": {**ADAMW, "lr": 0.0003},
    "adamw_cosine_bn_trained": {**ADAMW, "frozen_bn": False},
    "adamw_cosine_head_x100": {**ADAMW, "new_layer_lr_mult": 100},
    "v2_adamw_cosine": {**ADAMW, "model": "deeplab_v2"},
    "largefov_adamw_cosine": {**ADAMW, "model": "deeplab_largefov"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--root", help="dataset root (default: dataset.root of the config)")
    parser.add_argument("--labels", help="folder of <id>.png pseudo labels (default: the GT masks)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="candidates to run (default: all)")
    parser.add_argument("--epochs", type=int, help="epochs of every candidate (default: the config's)")
    parser.add_argument("--crop", type=int, help="crop size of every candidate (default: the config's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(REPO / "config.yaml", args.configfile)
    root, out = args.root or cfg["dataset"]["root"], Path(args.out)
    train_split, eval_split = cfg["dataset"]["train_split"], cfg["dataset"]["eval_split"]
    base = dict(cfg["segmentation"])
    base.update({k: v for k, v in (("epochs", args.epochs), ("crop_size", args.crop)) if v is not None})
    ev = cfg["evaluation"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
        f"labels: {args.labels or 'GT masks'}, {base['epochs']} epochs x batch {base['batch_size']}, "
        f"crop {base['crop_size']}",
        flush=True,
    )
    rows = []
    for name in args.only or CANDIDATES:
        seg = {**base, **CANDIDATES[name]}
        d = out / name
        start = time.perf_counter()
        if str(seg.get("warmup_steps", 0)).endswith("%"):  # a share of the steps, known once the data is
            n = len((Path(root) / "ImageSets" / "Segmentation" / f"{train_split}.txt").read_text().split())
            steps = n // seg["batch_size"] * seg["epochs"]
            seg["warmup_steps"] = int(steps * float(seg["warmup_steps"][:-1]) / 100)
        result = train_segmentation(
            root,
            train_split,
            seg,
            label_dir=args.labels,
            out_model=d / "model.pt",
            out_history_csv=d / "history.csv",
            checkpoint_dir=d / "checkpoints",
            threads=args.threads,
        )
        t_train = time.perf_counter() - start
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
        row = evaluate_label_dir(
            d / "predictions",
            root,
            eval_split,
            stage="segmentation",
            method=name,
            out_per_class_csv=d / "per_class.csv",
            summary_row_csv=d / "row.csv",
        )
        steps = result["images"] // min(seg["batch_size"], result["images"]) * seg["epochs"]
        rows.append((name, steps, t_train, result["final_pixel_acc"], row["mIoU"]))
        print(
            f"{name}: {steps} steps, train {t_train:.0f} s, train pixel acc {result['final_pixel_acc']:.3f}, "
            f"{eval_split} mIoU {row['mIoU']:.2f}",
            flush=True,
        )
    print(f"\n{'candidate':<26}{'steps':>6}{'train s':>9}{'pix acc':>9}{'mIoU':>8}")
    for name, steps, t_train, acc, miou in rows:
        print(f"{name:<26}{steps:>6}{t_train:>9.0f}{acc:>9.3f}{miou:>8.2f}")


if __name__ == "__main__":
    main()
