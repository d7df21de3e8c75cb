"""Cost of the classifier add-ons: time of one training step (forward + backward) per variant, in one run.

    python benchmarks/performance/addon_step_cost.py [--crop 128] [--batch 16] [--steps 10] [--device cpu|cuda]

Builds the EfficientNet-Lite0 CAM classifier (random weights: the cost does not depend on them) and times
SGD steps of the plain CAM loss and of each loss add-on (puzzle, binomial, both) on the same random batch,
printing seconds per step and the ratio to the plain step. Adversarial erasing adds no per-step cost: it
trains (rounds - 1) more classifiers. The same settings as config.yaml unless given.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from wsss_core.models.classifier import build_classifier
from wsss_core.train.addons import loss_addons
from wsss_core.train.classifier import CAMObjective, architecture

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["classifier"]
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.crop, args.crop)
    labels = (torch.rand(args.batch, args.classes) < 0.4).float()
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch} x {args.crop} px, "
        f"{args.steps} timed steps after 2 warm-up steps"
    )
    base = None
    for addons in ([], ["puzzle"], ["binomial"], ["puzzle", "binomial"]):
        model = build_classifier(architecture({**cfg, "method": "cam"}), args.classes).to(device).train()
        terms = loss_addons(
            {**cfg, "crop_size": args.crop, "addons": addons},
            model.backbone.stride,
            model.backbone.mean,
            model.backbone.std,
        )
        objective = CAMObjective(None, terms)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        times = []
        for step in range(args.steps + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = objective.forward(model, (images, labels), 0, step / (args.steps + 2), device)["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        per_step = sum(times[2:]) / args.steps
        base = base or per_step
        name = "+".join(["cam", *addons])
        print(f"{name:22s} {per_step:7.3f} s/step  x{per_step / base:.2f}")


if __name__ == "__main__":
    main()
