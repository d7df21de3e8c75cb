"""Does a trained AffinityNet tell pixel pairs apart? Its affinities of same-label and different-label pairs on
photos with ground-truth masks, and their ROC AUC.

    python benchmarks/quality/affinity_pairs.py --root ../shared/data/voc_coseg --split val \\
        --model default=results/voc_coseg/affinity/cam/model.pt [--model other=PATH ...] [--images 186]

The pairs are the ones the network is trained on and the random walk uses: every two cells of its grid closer
than its radius, each labelled by the mask's pixel at the cell's centre (cells on void or outside the photo are
left out). On held-out photos (val: AffinityNet trains on the training split's confident labels) the figures say
how well the affinities generalise, independent of the CAMs and of the confident labels' mistakes. Per model:
the mean affinity of background-background, same-class and different-label pairs, the share of different-label
pairs at or above 0.5, and the ROC AUC of same-label against different-label pairs (the chance that a random
same-label pair has the higher affinity; 0.5 = no better than chance).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from wsss_core.data.voc_layout import VOCDataset
from wsss_core.devices import select_device
from wsss_core.models.affinitynet import load_affinitynet
from wsss_core.refine.propagate import pair_separation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="dataset in the VOC layout, with masks")
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of a trained AffinityNet")
    parser.add_argument("--images", type=int, default=0, help="first N images of the split (0: all)")
    parser.add_argument("--max-pairs", type=int, default=300_000, help="pairs per kind sampled for the AUC")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)

    ds = VOCDataset(args.root)
    ids = ds.ids(args.split)[: args.images or None]
    rows = []
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            parser.error(f"--model {spec!r}: expected NAME=PATH")
        model, meta = load_affinitynet(path, device)
        figures = pair_separation(model, meta["radius"], ds, ids, device, max_pairs=args.max_pairs)
        rows.append((name, meta["stride"], meta["radius"], figures))

    print(f"{len(ids)} images of {args.root} ({args.split}); pairs labelled by the GT mask at cell centres")
    print(
        f"{'model':<20} {'stride':>6} {'radius':>6} {'bg-bg':>6} {'same-k':>6} {'diff':>6} {'diff>=.5':>8} {'AUC':>6}"
    )
    for name, stride, radius, r in rows:
        print(
            f"{name:<20} {stride:>6} {radius:>6} {r['bg_pos']:>6.3f} {r['fg_pos']:>6.3f} {r['neg']:>6.3f} "
            f"{r['neg_high']:>8.3f} {r['auc']:>6.3f}   pairs {r['counts']}"
        )


if __name__ == "__main__":
    main()
