"""Co-attention training recipes side by side: CAM mIoU of each beside the plain-CAM baseline, same images.

    python benchmarks/quality/coattention_recipes.py --configfile config/voc_coseg.yaml --images 240 \\
        --candidate 'reference={}' --candidate 'no_head={coattention: {head_convs: 0}}' \\
        --candidate 'warm={coattention: {warm_start: true}}' [--out /tmp/coattention_recipes]

The config is config.yaml with the ``--configfile`` files merged over it (as the workflow reads it). The
first ``--images`` images of a seeded shuffle of the training split are the training and scoring set (a
folder of links to the dataset with one more split list). The plain-CAM baseline (``cam``, the config's
shared classifier settings) is trained first; each candidate is the co-attention classifier with its
YAML overrides of the ``classifier`` section, warm-started from that baseline when it says so. For each,
the script prints training seconds (the compute it used) and the best-threshold CAM mIoU of the
single-round and multi-round CAM stores, computed exactly as rules infer_coattentive_cams and
evaluate_cams compute them. Trained models are kept under ``--out`` and reused by a rerun with the same
settings (delete the folder to retrain).

To screen recipes on a whole training split without retraining its baseline, pass a workflow run's
baseline: ``--images 100000 --baseline-model results/<run>/classifier/cam/model.pt --baseline-cams
results/<run>/cams/cam.h5`` (with ``--images`` at least the split's size the chosen images are the whole
split). ``--single-only`` scores the single-round store alone (infer_cams on the co-attention model,
the same maps) and skips the multi-round pass.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from wsss_core.cams.coattention import coattentive_cams
from wsss_core.cams.evaluate import sweep, threshold_grid
from wsss_core.cams.infer import infer_cams
from wsss_core.config_checks import load_config, merged
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.train.checkpoint import fingerprint
from wsss_core.plan import Plan
from wsss_core.train.classifier import train_classifier

REPO = Path(__file__).resolve().parents[2]


def subset_root(root: Path, split: str, count: int, seed: int, out: Path) -> tuple[Path, str]:
    """A folder of links to ``root`` whose split ``bench`` holds ``count`` seeded images of ``split``."""
    ids = VOCDataset(root).ids(split)
    chosen = sorted(np.random.default_rng(seed).permutation(ids)[: min(count, len(ids))].tolist())
    sub = out / "dataset"
    lists = sub / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name != "ImageSets" and not (sub / entry.name).exists():
            (sub / entry.name).symlink_to(entry.resolve())
    (lists / "bench.txt").write_text("".join(f"{i}\n" for i in chosen))
    return sub, "bench"


def best(store: Path, root: Path, split: str, grid: dict) -> tuple[float, float]:
    """(best mIoU, its threshold) of a CAM store on ``split`` over the thresholds of ``cams.eval_thresholds``."""
    ds = VOCDataset(root)
    table = sweep(str(store), ds, ds.ids(split), threshold_grid(grid["min"], grid["max"], grid["step"]))
    row = table.iloc[int(table["mIoU"].to_numpy().argmax())]
    return float(row["mIoU"]), float(row["threshold"])


def train(name: str, cfg: dict, root: Path, split: str, out: Path, init_model=None) -> tuple[Path, float]:
    """(model path, training seconds): trains unless ``out/name`` holds a model of the same settings."""
    folder = out / name
    model, stamp = folder / "model.pt", folder / "settings.json"
    settings = fingerprint({"cfg": cfg, "init": str(init_model)})
    if model.is_file() and stamp.is_file() and json.loads(stamp.read_text())["settings"] == settings:
        return model, json.loads(stamp.read_text())["seconds"]
    start = time.time()
    train_classifier(
        root,
        split,
        cfg,
        out_model=model,
        out_history_csv=folder / "train_history.csv",
        checkpoint_dir=folder / "checkpoints",
        init_model=init_model,
        threads=2,
    )
    seconds = time.time() - start
    stamp.write_text(json.dumps({"settings": settings, "seconds": seconds}))
    return model, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", action="append", default=[], help="config files merged over config.yaml")
    parser.add_argument("--images", type=int, default=240, help="training images used (and scored)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice")
    parser.add_argument("--candidate", action="append", required=True, help="NAME=YAML overrides of classifier")
    parser.add_argument("--out", type=Path, default=Path("/tmp/coattention_recipes"))
    parser.add_argument("--baseline-model", type=Path, help="a trained baseline (cam) model: not trained here")
    parser.add_argument("--baseline-cams", type=Path, help="that baseline's CAM store of the same split")
    parser.add_argument("--single-only", action="store_true", help="skip the multi-round CAMs")
    args = parser.parse_args()

    config = load_config(REPO / "config.yaml", args.configfile, REPO / "config" / "schema.yaml")
    data = config["dataset"]
    root, split = subset_root(Path(data["root"]), data["train_split"], args.images, args.seed, args.out)
    cams = config["cams"]
    grid = cams["eval_thresholds"]
    plan = Plan(config)

    if args.baseline_cams and not args.baseline_model:
        parser.error("--baseline-cams needs --baseline-model (the model that made it)")
    if args.baseline_model:
        base_model, base_seconds = args.baseline_model, float("nan")
    else:
        base_model, base_seconds = train("cam", plan.classifier_config("cam"), root, split, args.out)
    store = args.baseline_cams or args.out / "cam" / "cams.h5"
    if not args.baseline_cams:
        infer_cams(root, split, base_model, store, scales=cams["scales"], batch_size=cams["batch_size"], threads=2)
    rows = [("cam (baseline)", base_seconds, *best(store, root, split, grid), float("nan"), float("nan"))]
    print(f"baseline: {rows[0][2]:.2f} mIoU in {base_seconds:.0f} s", flush=True)

    for spec in args.candidate:
        name, _, overrides = spec.partition("=")
        classifier = merged(config["classifier"], yaml.safe_load(overrides) or {})
        cfg = Plan({**config, "classifier": {**classifier, "method": "coattention"}}).classifier_config("coattention")
        warm = base_model if cfg["coattention"]["warm_start"] else None
        model, seconds = train(name, cfg, root, split, args.out, init_model=warm)
        single, multi = args.out / name / "single.h5", args.out / name / "multi.h5"
        if args.single_only:
            infer_cams(root, split, model, single, scales=cams["scales"], batch_size=cams["batch_size"], threads=2)
            rows.append((name, seconds, *best(single, root, split, grid), float("nan"), float("nan")))
            print(f"{name}: single {rows[-1][2]:.2f} in {seconds:.0f} s", flush=True)
            continue
        coattentive_cams(
            root,
            split,
            model,
            single,
            multi,
            scales=cams["scales"],
            references=cams["references"],
            seed=cams["seed"],
            batch_size=cams["batch_size"],
            threads=2,
        )
        rows.append((name, seconds, *best(single, root, split, grid), *best(multi, root, split, grid)))
        print(f"{name}: single {rows[-1][2]:.2f}, multi {rows[-1][4]:.2f} in {seconds:.0f} s", flush=True)

    print(f"\n{args.images} images of {data['root']} ({data['train_split']}), CAM mIoU % at the best threshold")
    print(f"{'recipe':<28} {'train s':>8} {'single':>7} {'thr':>5} {'multi':>7} {'thr':>5} {'vs cam':>7}")
    for name, seconds, s_miou, s_thr, m_miou, m_thr in rows:
        gain = max(s_miou, m_miou if m_miou == m_miou else s_miou) - rows[0][2]
        print(f"{name:<28} {seconds:>8.0f} {s_miou:>7.2f} {s_thr:>5.2f} {m_miou:>7.2f} {m_thr:>5.2f} {gain:>+7.2f}")


if __name__ == "__main__":
    main()
