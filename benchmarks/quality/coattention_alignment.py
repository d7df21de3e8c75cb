"""Where does a co-attention classifier look? Attention of image n on a reference r, against the GT masks.

    python benchmarks/quality/coattention_alignment.py --model results/demo_coattention/classifier/coattention/model.pt \\
        --root data/demo_coattention [--images 128] [--init]

For the first ``images`` images n of the split (masks needed) and each labelled class k, one
reference r that also contains k (the seeded choice of multi-round inference), the co-attention
softmax(F_n^T W_P F_r) over r's positions at output stride, and prints:

* the attention mass that lands on r's class-k region, averaged over n's class-k positions and
  over n's background positions, beside the share of r's positions that region covers (what a
  uniform attention would give): a co-attention that matches objects puts more than that share
  there from n's object and less from n's background;
* how peaked the attention is (effective number of r positions, exp of its entropy);
* the health of the backbone features (share of exact zeros after the last ReLU6, std of the
  per-image channel means across images: ~0 means every image gives the same features).

``--init`` measures the same architecture before training (ImageNet backbone, seeded random heads), with
``--arch`` overrides of its architecture (e.g. another affinity).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from wsss_core.cams.coattention import SELF, choose_references
from wsss_core.cams.infer import prepare
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.models.classifier import build_classifier, load_classifier


def region(mask: np.ndarray, class_id: int, size) -> torch.Tensor:
    """(N,) bool: positions of the feature grid mostly covered by ``class_id`` in ``mask``."""
    hit = torch.from_numpy(mask == class_id).float()[None, None]
    return (F.adaptive_avg_pool2d(hit, size)[0, 0] > 0.5).flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a co-attention classifier (model.pt of train_classifier)")
    parser.add_argument("--root", required=True, help="dataset root in the VOC layout")
    parser.add_argument("--split", default="train_aug")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", action="store_true", help="the untrained architecture instead of the model")
    parser.add_argument(
        "--arch", default="{}", help="with --init: YAML overrides of the architecture, e.g. '{affinity: cosine}'"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ds = VOCDataset(args.root)
    model, meta = load_classifier(args.model)
    if args.init:
        torch.manual_seed(args.seed)
        arch = {**meta["arch"], **(yaml.safe_load(args.arch) or {})}
        model = build_classifier(arch, len(meta["classes"]) - 1, weights="imagenet").eval()
    ids = ds.ids(args.split)
    labels = ds.label_matrix(ids)

    def features(index: int) -> torch.Tensor:
        image = torch.from_numpy(ds.load_image(ids[index])).permute(2, 0, 1)[None]
        return model.features(prepare(image, meta["mean"], meta["std"]))

    from_object, from_background, share, effective, pooled = [], [], [], [], []
    with torch.no_grad():
        for n in range(min(args.images, len(ids))):
            f_n = features(n)
            pooled.append(f_n.mean((2, 3))[0])
            zeros = (f_n == 0).float().mean().item()
            mask_n = ds.load_mask(ids[n])
            for class_id in ds.labels(ids[n]):
                chosen = choose_references(labels, n, class_id, 1, args.seed)
                if not chosen:
                    continue
                f_r = features(chosen[0])
                attention = model.affinities(model.query(f_n, SELF), f_r).softmax(-1)[0]  # (N_n, N_r)
                in_n = region(mask_n, class_id, f_n.shape[-2:])
                in_r = region(ds.load_mask(ids[chosen[0]]), class_id, f_r.shape[-2:])
                background_n = region(mask_n, 0, f_n.shape[-2:])
                if not (in_n.any() and in_r.any() and background_n.any()):
                    continue
                mass = attention[:, in_r].sum(1)
                from_object.append(mass[in_n].mean().item())
                from_background.append(mass[background_n].mean().item())
                share.append(in_r.float().mean().item())
                entropy = -(attention * attention.clamp_min(1e-12).log()).sum(1)
                effective.append((entropy.exp().mean().item(), attention.shape[1]))
            pooled[-1] = (pooled[-1], zeros)
    means = torch.stack([p for p, _ in pooled])
    print(
        f"model {'(untrained) ' if args.init else ''}{args.model}, {len(share)} (n, r, class) triples "
        f"from {len(pooled)} images of {args.root}"
    )
    print(
        f"attention mass on r's class region: from n's class region {np.mean(from_object):.3f}, "
        f"from n's background {np.mean(from_background):.3f}; the region's share of r {np.mean(share):.3f}"
    )
    print(
        f"effective attended positions {np.mean([e for e, _ in effective]):.1f} "
        f"of {np.mean([n for _, n in effective]):.0f} on average"
    )
    print(
        f"features: zero share {np.mean([z for _, z in pooled]):.3f}, "
        f"std across images of channel means {means.std(0).mean().item():.4f}"
    )


if __name__ == "__main__":
    main()
