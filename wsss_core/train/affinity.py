"""Train PSA's AffinityNet on confident labels (:mod:`wsss_core.refine.affinity_labels`).

Each step takes random-scaled, flipped, cropped images with their confident-label maps
(the segmentation trainer's data and augmentation: labels padded with 255), samples the
labels at the centre of every cell of the network's grid, and fits the affinities of all
pairs within ``radius`` cells to them with PSA's loss (:func:`~wsss_core.refine.random_walk.
affinity_loss`). The loop is ``train/engine.py``'s: SGD with momentum and a poly decay, the new
embedding layers at ``new_layer_lr_mult`` times the backbone's rate; checkpointed every epoch and
resumed after a kill to the same weights as an uninterrupted run. Every setting comes from the
``affinity`` section of the config.

PSA's reference (ResNet-38, VOC): 8 epochs of batch 8, 448-px crops of images resized to a
long side of 448-768, radius 5 at stride 8, lr 0.1 (its ``PolyOptimizer`` passes weight
decay into SGD's momentum slot, so it ran without momentum: lr 0.01 with momentum 0.9 takes
steps of the same size).
"""

from __future__ import annotations

from pathlib import Path

import torch

from wsss_core.data.joint_transforms import JointAugment
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.models.affinitynet import build_affinitynet
from wsss_core.refine.random_walk import (
    affinity_loss,
    displacements,
    grid_labels,
    pair_affinities,
    pair_indices,
)
from wsss_core.train.engine import Engine, Objective
from wsss_core.train.segmentation import LabelledPixels, label_fingerprint

CONFIG_KEYS = tuple(
    "backbone weights weights_dir output_stride frozen_bn radius epochs batch_size optimizer lr new_layer_lr_mult "
    "momentum weight_decay poly_power crop_size scale_range flip color_jitter num_workers seed amp "
    "amp_dtype channels_last".split()
)


def _check_config(cfg: dict) -> None:
    missing = [f"affinity.{k}" for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"affinity config lacks key(s) {missing}")
    displacements(cfg["radius"])  # raises on a bad radius
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1:
        raise ValueError(
            f"config keys affinity.epochs and affinity.batch_size must be >= 1, got {cfg['epochs']}, "
            f"{cfg['batch_size']}"
        )
    if cfg["crop_size"] < 1 or cfg["crop_size"] % cfg["output_stride"]:
        raise ValueError(
            f"config key affinity.crop_size: crop_size {cfg['crop_size']} must be a positive multiple "
            f"of output_stride {cfg['output_stride']}, so every cell of the grid lies inside the crop"
        )
    if len(cfg["scale_range"]) != 2:
        raise ValueError(f"config key affinity.scale_range must be [min, max], got {cfg['scale_range']}")


class AffinityObjective(Objective):
    """PSA's loss (:func:`~wsss_core.refine.random_walk.affinity_loss`) of the affinities of all pairs of grid
    cells within ``radius`` against the labels at the cells' centres; its three terms in the history."""

    def __init__(self, data: LabelledPixels, *, stride: int, radius: int, crop_size: int, device: torch.device):
        self.data, self.stride, self.radius = data, stride, radius
        grid = crop_size // stride
        self.ind_from, self.ind_to = (t.to(device) for t in pair_indices(grid, grid, radius))

    def forward(self, model, batch, epoch: int, progress: float, device: torch.device) -> torch.Tensor:
        return model(batch[0].to(device, non_blocking=True))

    def loss(self, embedding, batch, device: torch.device) -> tuple[dict, dict]:
        labels = batch[1].to(device, non_blocking=True)
        aff = pair_affinities(embedding, self.radius)  # fp32, outside autocast
        return affinity_loss(aff, grid_labels(labels, self.stride), self.ind_from, self.ind_to), {}


def train_affinity(
    dataset_root,
    split: str,
    cfg: dict,
    *,
    label_dir,
    out_model,
    out_history_csv,
    checkpoint_dir,
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """Train on ``split`` with confident labels ``<label_dir>/<id>.png`` and the training keys of the
    ``affinity`` config section ``cfg`` (:data:`CONFIG_KEYS`); writes ``out_model`` and the history CSV.

    Raises FileNotFoundError naming the first missing label PNG before any training.
    Returns ``{"images", "epochs", "final_loss"}``.
    """
    _check_config(cfg)
    ds = VOCDataset(dataset_root)
    ids = ds.ids(split)
    if not ids:
        raise ValueError(f"{ds.split_file(split)}: split '{split}' lists no images")
    labels_hash = label_fingerprint(Path(label_dir), ids)
    engine = Engine("affinity", cfg, threads=threads, device=device)

    arch = {"backbone": cfg["backbone"], "output_stride": cfg["output_stride"]}
    model = build_affinitynet(arch, weights=cfg["weights"], weights_dir=cfg["weights_dir"], frozen_bn=cfg["frozen_bn"])
    bb = model.backbone
    augment = JointAugment(
        cfg["crop_size"],
        tuple(cfg["scale_range"]),
        tuple(bb.mean),
        tuple(bb.std),
        flip=cfg["flip"],
        color_jitter=cfg["color_jitter"],
    )
    data = LabelledPixels(ds, ids, augment, label_dir)
    objective = AffinityObjective(
        data, stride=bb.stride, radius=cfg["radius"], crop_size=cfg["crop_size"], device=engine.device
    )

    run = {"cfg": cfg, "split": split, "ids": ids, "classes": ds.classes, "labels_sha256": labels_hash}
    meta = {
        "arch": arch,
        "classes": list(ds.classes),
        "mean": list(bb.mean),
        "std": list(bb.std),
        "stride": bb.stride,
        "radius": cfg["radius"],
        "split": split,
        "labels": str(label_dir),
        "labels_sha256": labels_hash,
        "config": cfg,
    }
    what = (
        f"AffinityNet ({cfg['backbone']}) on {len(data)} images of '{split}' (labels: {label_dir}), "
        f"{len(objective.ind_from)} pairs per crop"
    )
    history = engine.fit(
        model,
        objective,
        run=run,
        meta=meta,
        out_model=out_model,
        out_history_csv=out_history_csv,
        checkpoint_dir=checkpoint_dir,
        what=what,
    )
    return {"images": len(data), "epochs": cfg["epochs"], "final_loss": history[-1]["loss"]}
