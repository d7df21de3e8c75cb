"""Cost of multi-round co-attentive CAM inference relative to single-round inference, measured in one run.

    python benchmarks/performance/coattentive_cams.py --model results/demo/classifier/coattention/model.pt \\
        --root data/demo --out /tmp/coatt_bench [--configfile ...] [--references 3] [--repeats 2]

Times, on the same model, data and device, alternating ``repeats`` times:

* single-round: :func:`wsss_core.cams.infer.infer_cams` (the plain CAMs, multi-scale + flip);
* multi-round: :func:`wsss_core.cams.coattention.coattentive_cams`, which writes the single-round
  CAMs too, from the same backbone passes, plus the multi-round ones (self-pairs and R references
  per labelled class served from a per-image feature cache);

and prints the best time of each, their ratio and the number of reference pairs. The target
is a ratio of at most 1.5 at R = 3. The scales, flip and batch size are those of the config.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wsss_core.cams.coattention import coattentive_cams
from wsss_core.cams.infer import infer_cams
from wsss_core.config_checks import load_config

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a co-attention classifier (model.pt of train_classifier)")
    parser.add_argument("--root", required=True, help="dataset root in the VOC layout")
    parser.add_argument("--split", help="split to infer (default: dataset.train_split of the config)")
    parser.add_argument("--configfile", nargs="*", default=[])
    parser.add_argument("--references", type=int, help="references per class (default: cams.references)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(REPO / "config.yaml", args.configfile)
    c = cfg["cams"]
    split = args.split or cfg["dataset"]["train_split"]
    references = args.references or c["references"]
    out = Path(args.out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
        f"threads {args.threads}, scales {c['scales']}, flip {c['flip']}, R = {references}"
    )
    common = dict(
        scales=c["scales"],
        flip=c["flip"],
        batch_size=c["batch_size"],
        num_workers=c["num_workers"],
        threads=args.threads,
    )
    single, multi, pairs = [], [], 0
    for repeat in range(args.repeats):
        start = time.perf_counter()
        infer_cams(args.root, split, args.model, out / "single_round.h5", **common)
        single.append(time.perf_counter() - start)
        start = time.perf_counter()
        summary = coattentive_cams(
            args.root,
            split,
            args.model,
            out / "both_single.h5",
            out / "multi_round.h5",
            references=references,
            seed=c["seed"],
            **common,
        )
        multi.append(time.perf_counter() - start)
        pairs = summary["reference_pairs"]
        print(
            f"repeat {repeat + 1}: single-round {single[-1]:.1f} s, multi-round (+ single) {multi[-1]:.1f} s",
            flush=True,
        )
    result = {
        "images": summary["images"],
        "reference_pairs": pairs,
        "single_round_s": round(min(single), 2),
        "multi_round_s": round(min(multi), 2),
        "ratio": round(min(multi) / min(single), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
