"""Time U²-Netp saliency per image and, where masks exist, its foreground IoU; prints a table.

    python benchmarks/performance/saliency.py --root ../shared/data/voc_samples --split samples [--device auto] [--threads 1]

Runs the functions the saliency stage uses (open_u2netp, predict_saliency) image by image, so
the seconds are the model's (decode excluded). IoU: saliency > 0.5 vs GT foreground (GT > 0),
void (255) left out. Use it to compare machines and thread counts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.pseudo.saliency import open_u2netp, predict_saliency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    dataset = VOCDataset(args.root)
    session = open_u2netp(device=args.device, threads=args.threads)
    print(f"providers {session.get_providers()[:1]}, {args.threads} intra-op thread(s)")
    seconds, ious = [], []
    for image_id in dataset.ids(args.split):
        image = dataset.load_image(image_id)
        start = time.perf_counter()
        saliency = predict_saliency(session, [image])[0]
        seconds.append(time.perf_counter() - start)
        iou = float("nan")
        if dataset.has_mask(image_id):
            gt = dataset.load_mask(image_id)
            valid, fg, pred = gt != IGNORE_INDEX, gt > 0, saliency > 0.5
            iou = float((pred & fg & valid).sum() / ((pred | fg) & valid).sum())
            ious.append(iou)
        print(f"{image_id:24s} {image.shape[1]}x{image.shape[0]}  {seconds[-1]:.3f} s  IoU {iou:.3f}")
    mean_iou = np.mean(ious) if ious else float("nan")
    print(f"{'mean':24s} {np.mean(seconds):.3f} s/image (median {np.median(seconds):.3f})  IoU {mean_iou:.3f}")


if __name__ == "__main__":
    main()
