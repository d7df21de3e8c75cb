"""Does a classifier variant's training collapse? The first steps of a training, with the spread of its maps.

    python benchmarks/quality/feature_collapse.py [--root data/demo] [--variant cam+puzzle] [--lr LR]
        [--steps 60] [--every 10] [--alpha 1] [--warmup 0] [--new-layer-lr-mult 10] [--[no-]frozen-bn]
        [--crop 128] [--resize-long 96 160] [--threads 2]

Trains the EfficientNet-Lite0 CAM classifier (ImageNet weights, the settings of config.yaml unless given)
with the training code's own objective and add-on terms, and prints every ``--every`` steps the mean loss
terms and two spreads measured on the step's batch: the spatial standard deviation of the labelled classes'
CAMs and of the backbone features. A healthy run keeps both well above zero while the losses fall; when the
features die (ReLU outputs constant over the image) both go to ~0, every CAM is flat, and the class loss
stays at the "predict the class frequencies" level: the CAMs of such a classifier localise nothing, whatever
the loss says. The add-ons' schedules (Puzzle-CAM's alpha ramp) follow the full training this run is the
start of (``--epochs`` x steps per epoch). ``--warmup N`` ramps the learning rate linearly over the first N steps,
which the training code does not do: it tests whether a warm-up would keep a variant's features alive.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch
import yaml

from wsss_core.data.transforms import Augment
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.models.classifier import build_classifier
from wsss_core.plan import parse_variant
from wsss_core.train.addons import loss_addons
from wsss_core.train.classifier import CAMObjective, LabelledImages, architecture, method_settings
from wsss_core.train.loop import make_optimizer, poly_lambda

REPO = Path(__file__).resolve().parents[2]


def spreads(model, images, labels) -> tuple[float, float]:
    """(mean spatial std of the labelled classes' CAMs, mean spatial std of the feature channels)."""
    with torch.no_grad():
        features = model.features(images)
        cams = model.classifier(features)
    cam_std = cams.flatten(2).std(dim=2)[labels > 0].mean().item()
    return cam_std, features.flatten(2).std(dim=2).mean().item()


def main() -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["classifier"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO / "data" / "demo"), help="a dataset in the VOC layout")
    parser.add_argument("--split", default="train_aug")
    parser.add_argument("--variant", default="cam+puzzle", help="cam with add-ons (e.g. cam+puzzle+binomial)")
    parser.add_argument("--lr", type=float, help="backbone lr (default: the variant's, config.yaml)")
    parser.add_argument("--alpha", type=float, default=cfg["puzzle"]["alpha"], help="Puzzle-CAM's max alpha")
    parser.add_argument("--crop", type=int, default=cfg["crop_size"])
    parser.add_argument("--resize-long", type=int, nargs=2, default=cfg["resize_long"])
    parser.add_argument("--batch", type=int, default=cfg["batch_size"])
    parser.add_argument("--epochs", type=int, default=cfg["epochs"], help="the full training's length")
    parser.add_argument(
        "--new-layer-lr-mult",
        type=float,
        default=cfg["new_layer_lr_mult"],
        help="the class conv's rate over the backbone's",
    )
    parser.add_argument(
        "--frozen-bn",
        action=argparse.BooleanOptionalAction,
        help="BatchNorm with ImageNet statistics, untrained (default: the variant's, config.yaml)",
    )
    parser.add_argument("--warmup", type=int, default=0, help="linear lr warm-up steps (0: none, as training)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    method, addons = parse_variant(args.variant)
    if method != "cam":
        raise SystemExit(f"--variant {args.variant}: only the cam method (and its add-ons) is measured here")
    cfg.update(method=method, addons=list(addons), crop_size=args.crop, puzzle={**cfg["puzzle"], "alpha": args.alpha})
    cfg = method_settings(cfg)  # the variant's own lr and BatchNorm mode (classifier.puzzle), as training
    args.lr = cfg["lr"] if args.lr is None else args.lr
    args.frozen_bn = cfg["frozen_bn"] if args.frozen_bn is None else args.frozen_bn
    ds = VOCDataset(args.root)
    model = build_classifier(
        architecture(cfg),
        ds.num_classes - 1,
        weights=cfg["weights"],
        weights_dir=cfg["weights_dir"],
        frozen_bn=args.frozen_bn,
    )
    bb = model.backbone
    augment = Augment(
        args.crop,
        tuple(args.resize_long),
        tuple(bb.mean),
        tuple(bb.std),
        flip=cfg["flip"],
        color_jitter=cfg["color_jitter"],
    )
    data = LabelledImages(ds, ds.ids(args.split), augment)
    objective = CAMObjective(data, loss_addons(cfg, bb.stride, bb.mean, bb.std))
    loader = torch.utils.data.DataLoader(data, args.batch, shuffle=True, drop_last=True)
    total = len(loader) * args.epochs
    optimizer = make_optimizer(
        "sgd",
        *model.param_groups(),
        lr=args.lr,
        new_layer_lr_mult=args.new_layer_lr_mult,
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
    )
    poly = poly_lambda(total, cfg["poly_power"])
    warmup = max(args.warmup, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: poly(step) * min(1.0, (step + 1) / warmup))
    print(
        f"{args.variant} on {args.root} ({len(data)} images, crop {args.crop}), lr {args.lr}, alpha {args.alpha}, "
        f"frozen BN {args.frozen_bn}, {args.steps} of {total} steps, warm-up {args.warmup}"
    )
    model.train()
    sums, start = {}, time.perf_counter()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for step, (images, labels) in enumerate(itertools.islice(batches, args.steps), start=1):
        terms = objective.forward(model, (images, labels), 0, (step - 1) / total, torch.device("cpu"))
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        scheduler.step()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.item() / args.every
        if step % args.every == 0:
            cam_std, feature_std = spreads(model, images, labels)
            losses = "  ".join(f"{name} {value:.3f}" for name, value in sums.items())
            print(
                f"step {step:4d}  {losses}  cam_std {cam_std:.3f}  feature_std {feature_std:.4f}  "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
            sums = {}


if __name__ == "__main__":
    main()
