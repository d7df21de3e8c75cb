"""Train PSA's AffinityNet on confident labels (:mod:`wsss_core.refine.affinity_labels`).

Each step takes random-scaled, flipped, cropped images with their confident-label maps
(the segmentation trainer's data and augmentation: labels padded with 255), samples the
labels at the centre of every cell of the network's grid, and fits the affinities of all
pairs within ``radius`` cells to them with PSA's loss (:func:`~wsss_core.refine.random_walk.
affinity_loss`). SGD with momentum and a poly decay, the new embedding layers at
``new_layer_lr_mult`` times the backbone's rate; checkpointed every epoch and resumed after a
kill to the same weights as an uninterrupted run. Every setting is a keyword argument.

PSA's reference (ResNet-38, VOC): 8 epochs of batch 8, 448-px crops of images resized to a
long side of 448-768, radius 5 at stride 8, lr 0.1 (its ``PolyOptimizer`` passes weight
decay into SGD's momentum slot, so it ran without momentum: lr 0.01 with momentum 0.9 takes
steps of the same size).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from wsss_core.data.joint_transforms import JointAugment
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.models.affinitynet import build_affinitynet
from wsss_core.refine.random_walk import affinity_loss, displacements, pair_affinities, pair_indices
from wsss_core.train.checkpoint import fingerprint, resume, save_epoch, save_final, seed_everything
from wsss_core.train.distributed import setup
from wsss_core.train.loop import (StateBundle, autocast, grad_scaler, memory_format, optimizer_step,
                                  poly_lambda, sgd_two_groups)  # fmt: skip
from wsss_core.train.segmentation import LabelledPixels, label_fingerprint

log = logging.getLogger(__name__)
TERMS = ("bg_pos", "fg_pos", "neg")


def grid_labels(labels: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, S, S) pixel labels -> (B, S / stride, S / stride): the label at each cell's centre pixel."""
    return labels[:, stride // 2 :: stride, stride // 2 :: stride]


def _check(epochs, batch_size, crop_size, output_stride, scale_range, radius) -> None:
    displacements(radius)  # raises on a bad radius
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"affinity training: epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if crop_size < 1 or crop_size % output_stride:
        raise ValueError(f"affinity training: crop_size {crop_size} must be a positive multiple of output_stride "
                         f"{output_stride}, so every cell of the grid lies inside the crop")  # fmt: skip
    if len(scale_range) != 2:
        raise ValueError(f"affinity training: scale_range must be [min, max], got {scale_range}")


def train_affinity(dataset_root, split: str, label_dir, *, out_model, out_history_csv, checkpoint_dir,
                   backbone: str = "efficientnet_lite0", weights: str = "imagenet", weights_dir=None,
                   output_stride: int = 8, frozen_bn: bool = True, radius: int = 5, epochs: int = 8,
                   batch_size: int = 8, lr: float = 0.01, new_layer_lr_mult: float = 10, momentum: float = 0.9,
                   weight_decay: float = 1e-4, poly_power: float = 0.9, crop_size: int = 448,
                   scale_range=(0.9, 1.5), flip: bool = True, color_jitter: float = 0.3, num_workers: int = 0,
                   seed: int = 0, amp: bool = True, amp_dtype: str = "float16", channels_last: bool = False,
                   threads: int = 1, device: str = "auto") -> dict:  # fmt: skip
    """Train on ``split`` with confident labels ``<label_dir>/<id>.png``; writes ``out_model`` and the CSV.

    Raises FileNotFoundError naming the first missing label PNG before any training.
    Returns ``{"images", "epochs", "final_loss"}``.
    """
    _check(epochs, batch_size, crop_size, output_stride, scale_range, radius)
    ds = VOCDataset(dataset_root)
    ids = ds.ids(split)
    if not ids:
        raise ValueError(f"{ds.split_file(split)}: split '{split}' lists no images")
    labels_hash = label_fingerprint(Path(label_dir), ids)
    ctx = setup(device)  # one process, or one rank of a data-parallel job (train/distributed.py)
    device = ctx.device
    torch.set_num_threads(max(1, threads // ctx.world))
    seed_everything(seed)

    arch = {"backbone": backbone, "output_stride": output_stride}
    model = build_affinitynet(arch, weights=weights, weights_dir=weights_dir, frozen_bn=frozen_bn)
    model = model.to(device, memory_format=memory_format(device, channels_last))
    net = ctx.wrap(model)  # what runs the forward: DDP around the model when there are several processes
    bb = model.backbone
    augment = JointAugment(crop_size, tuple(scale_range), tuple(bb.mean), tuple(bb.std), flip=flip,
                           color_jitter=color_jitter)  # fmt: skip
    data = LabelledPixels(ds, ids, augment, label_dir)
    batch_size = min(batch_size, len(data))
    ctx.per_process_batch(batch_size, "affinity.batch_size")
    steps_per_epoch = len(data) // batch_size
    pretrained, new = model.param_groups()
    optimizer = sgd_two_groups(pretrained, new, lr=lr, new_layer_lr_mult=new_layer_lr_mult, momentum=momentum,
                               weight_decay=weight_decay)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(steps_per_epoch * epochs, poly_power))
    scaler = grad_scaler(device, amp, amp_dtype)
    schedule = StateBundle(scheduler=scheduler, scaler=scaler)

    settings = dict(arch, weights=str(weights), weights_dir=weights_dir and str(weights_dir), frozen_bn=frozen_bn,
                    radius=radius, epochs=epochs, batch_size=batch_size, lr=lr, new_layer_lr_mult=new_layer_lr_mult,
                    momentum=momentum, weight_decay=weight_decay, poly_power=poly_power, crop_size=crop_size,
                    scale_range=list(scale_range), flip=flip, color_jitter=color_jitter, seed=seed,
                    amp=amp, amp_dtype=amp_dtype)  # fmt: skip
    settings_hash = fingerprint({"settings": settings, "split": split, "ids": ids, "classes": ds.classes,
                                 "labels_sha256": labels_hash})  # fmt: skip
    checkpoint = Path(checkpoint_dir) / "last.pt"
    history, start_epoch = resume(checkpoint, settings_hash, model=model, optimizer=optimizer, scheduler=schedule)
    if start_epoch:
        log.info("resumed from %s after epoch %d", checkpoint, start_epoch)
    ctx.decorrelate(seed, start_epoch)
    grid = crop_size // bb.stride
    ind_from, ind_to = (t.to(device) for t in pair_indices(grid, grid, radius))
    log.info("training AffinityNet (%s) on %d images of '%s' (labels: %s), %d epochs x %d steps, %d pairs per "
             "crop, device %s, %d process(es)", backbone, len(data), split, label_dir, epochs, steps_per_epoch,
             len(ind_from), device, ctx.world)  # fmt: skip

    for epoch in range(start_epoch, epochs):
        loader = ctx.loader(data, batch_size, shuffle=True, seed=seed, epoch=epoch, num_workers=num_workers)
        model.train()
        start, sums, seen = time.perf_counter(), dict.fromkeys(("total", *TERMS), 0.0), 0
        for images, labels in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", mininterval=10, ascii=True,
                                   disable=not ctx.is_main):  # fmt: skip
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, amp, amp_dtype):
                embedding = net(images)
            aff = pair_affinities(embedding, radius)  # fp32, outside autocast
            terms = affinity_loss(aff, grid_labels(labels, bb.stride), ind_from, ind_to)
            optimizer_step(terms["total"], optimizer, scaler, scheduler)
            for name in sums:
                sums[name] += terms[name].item() * len(images)
            seen += len(images)
        sums = ctx.sum({**sums, "": seen})
        seen = sums.pop("")
        means = {name: round(value / max(seen, 1), 6) for name, value in sums.items()}
        record = {"epoch": epoch + 1, "loss": means.pop("total"), **{f"loss_{k}": v for k, v in means.items()},
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
        history.append(record)
        log.info("epoch %d: loss %.4f, %.1f s", record["epoch"], record["loss"], record["seconds"])
        save_epoch(ctx, checkpoint, model=model, optimizer=optimizer, scheduler=schedule, epoch=epoch + 1,
                   settings_hash=settings_hash, history=history)  # fmt: skip

    meta = {"arch": arch, "classes": list(ds.classes), "mean": list(bb.mean), "std": list(bb.std),
            "stride": bb.stride, "radius": radius, "split": split, "labels": str(label_dir),
            "labels_sha256": labels_hash, "settings": settings}  # fmt: skip
    save_final(ctx, out_model, model, meta, out_history_csv, history, checkpoint)
    return {"images": len(data), "epochs": epochs, "final_loss": history[-1]["loss"]}
