"""Final stage: train a DeepLab segmenter on pseudo labels (or on the ground-truth masks, as a reference).

Per-pixel cross-entropy over the classes incl. background, with 255 (void: pseudo-label
"don't know" regions, mask borders, crop padding) excluded. The loop is ``train/engine.py``'s: SGD
with momentum or AdamW, a poly or cosine LR per step after an optional linear warm-up, heads (and
VGG's fc6/fc7) at ``new_layer_lr_mult`` times the backbone's rate; checkpointed every epoch and
resumed after a kill to the same weights as an uninterrupted run. Every hyper-parameter comes from
the ``segmentation`` section of the config.

The loss is the mean over the batch's non-void pixels. A batch without any is not an
error: its loss is 0 with zero gradient (the optimizer still applies momentum and weight
decay), where ``F.cross_entropy`` would return NaN and poison the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from wsss_core.data.joint_transforms import JointAugment
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset
from wsss_core.models.deeplab import SEG_ARCH_KEYS, build_segmenter
from wsss_core.train.engine import Engine, Objective

CONFIG_KEYS = tuple(
    "model backbone weights weights_dir output_stride aspp_channels frozen_bn epochs batch_size optimizer "
    "lr new_layer_lr_mult momentum weight_decay lr_schedule poly_power warmup_steps input_scale crop_size "
    "scale_range flip color_jitter num_workers seed amp amp_dtype channels_last".split()
)


class LabelledPixels(Dataset):
    """(augmented image, label map) pairs: the dataset's masks, or ``<label_dir>/<id>.png`` pseudo labels."""

    def __init__(self, dataset: VOCDataset, ids: list[str], augment: JointAugment, label_dir: str | Path | None):
        self.dataset, self.ids, self.augment = dataset, ids, augment
        self.label_dir = None if label_dir is None else Path(label_dir)

    def label_path(self, image_id: str) -> Path:
        return self.dataset.mask_path(image_id) if self.label_dir is None else self.label_dir / f"{image_id}.png"

    def load_label(self, image_id: str) -> np.ndarray:
        if self.label_dir is None:
            label = self.dataset.load_mask(image_id)
        else:
            with Image.open(self.label_path(image_id)) as img:
                label = np.asarray(img)
        # a wrong value would only surface as a device-side assert deep inside the loss
        bad = label.ndim != 2 or label.dtype != np.uint8
        if not bad:
            values = np.unique(label)
            bad = values[values != IGNORE_INDEX].max(initial=0) >= self.dataset.num_classes
        if bad:
            raise ValueError(
                f"{self.label_path(image_id)}: expected a 2-D uint8 label map with values "
                f"0..{self.dataset.num_classes - 1} or {IGNORE_INDEX}"
            )
        return label

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image, label = self.dataset.load_image(image_id), self.load_label(image_id)
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"{self.label_path(image_id)}: label size {label.shape[1]}x{label.shape[0]} != "
                f"image size {image.shape[1]}x{image.shape[0]}"
            )
        return self.augment(image, label)


def label_fingerprint(label_dir: Path, ids: list[str]) -> str:
    """Digest of the label files' bytes: regenerated pseudo labels never resume a stale checkpoint.

    Raises FileNotFoundError naming the first missing ``<id>.png``, before any training.
    """
    digest = hashlib.sha256()
    for image_id in ids:
        path = label_dir / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: label map missing (label_dir {label_dir} must hold <id>.png for " f"every image of the split)"
            )
        digest.update(image_id.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, mean_over: float | None = None
) -> tuple[torch.Tensor, int, int]:
    """(mean cross-entropy over non-void pixels, 0 if there are none; correct pixels; non-void pixels).

    ``mean_over``: the pixel count the summed loss is divided by, default this batch's non-void
    pixels. Data-parallel training passes the global batch's count / processes, so that the
    gradient DDP averages is the mean over the global batch's pixels, not a mean of per-process means.
    """
    logits = logits.float()  # fp32 loss under autocast
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    valid = labels != IGNORE_INDEX
    n_valid = int(valid.sum())
    # ignored pixels are 0 in per_pixel, with zero gradient
    loss = per_pixel.sum() / max(n_valid if mean_over is None else mean_over, 1)
    correct = int(((logits.detach().argmax(1) == labels) & valid).sum())
    return loss, correct, n_valid


def _check_config(cfg: dict) -> None:
    missing = [f"segmentation.{k}" for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"segmentation config lacks key(s) {missing}")
    if cfg["epochs"] < 1:
        raise ValueError(f"config key segmentation.epochs must be >= 1, got {cfg['epochs']}")
    if len(cfg["scale_range"]) != 2:
        raise ValueError(f"config key segmentation.scale_range must be [min, max], got {cfg['scale_range']}")
    if not cfg["input_scale"] > 0:
        raise ValueError(f"config key segmentation.input_scale must be > 0, got {cfg['input_scale']}")


class SegmentationObjective(Objective):
    """Per-pixel cross-entropy of the network's logits (:func:`segmentation_loss`); pixel accuracy in the history."""

    def __init__(self, data: LabelledPixels, ctx):
        self.data, self.ctx = data, ctx

    def forward(self, model, batch, epoch: int, progress: float, device: torch.device) -> torch.Tensor:
        return model(batch[0].to(device, non_blocking=True))

    def loss(self, logits, batch, device: torch.device) -> tuple[dict, dict]:
        labels = batch[1].to(device, non_blocking=True)
        mean_over = None
        if self.ctx.world > 1:  # the global batch's non-void pixels, shared out over the processes
            mean_over = self.ctx.sum({"valid": int((labels != IGNORE_INDEX).sum())})["valid"] / self.ctx.world
        loss, correct, valid = segmentation_loss(logits, labels, mean_over)
        return {"total": loss}, {"correct": correct, "valid": valid}

    def metrics(self, counts: dict) -> dict:
        valid = counts.get("valid", 0)
        return {"pixel_acc": round(counts["correct"] / valid, 6) if valid else float("nan")}


def train_segmentation(
    dataset_root,
    split: str,
    cfg: dict,
    *,
    label_dir=None,
    out_model,
    out_history_csv,
    checkpoint_dir,
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """Train on ``split`` with labels from ``label_dir`` (None: the masks) and the config section ``cfg``."""
    _check_config(cfg)
    ds = VOCDataset(dataset_root)
    ids = ds.ids(split)
    if not ids:
        raise ValueError(f"{ds.split_file(split)}: split '{split}' lists no images")
    if label_dir is None:
        labels_source, labels_hash = "gt", None
        missing = [p for p in map(ds.mask_path, ids) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: mask missing ({len(missing)} of split '{split}' missing)")
    else:
        labels_source, labels_hash = str(label_dir), label_fingerprint(Path(label_dir), ids)
    engine = Engine("segmentation", cfg, threads=threads, device=device)

    arch = {k: cfg[k] for k in SEG_ARCH_KEYS}
    model = build_segmenter(
        arch, ds.num_classes, weights=cfg["weights"], weights_dir=cfg["weights_dir"], frozen_bn=cfg["frozen_bn"]
    )
    scale_range = tuple(s * cfg["input_scale"] for s in cfg["scale_range"])
    augment = JointAugment(
        cfg["crop_size"],
        scale_range,
        tuple(model.mean),
        tuple(model.std),
        flip=cfg["flip"],
        color_jitter=cfg["color_jitter"],
    )
    data = LabelledPixels(ds, ids, augment, label_dir)
    if cfg["model"] == "deeplab_v3plus" and min(cfg["batch_size"], len(data)) < 2:
        raise ValueError(
            f"config key segmentation.batch_size: deeplab_v3plus trains BatchNorm in its image-pooling "
            f"branch and needs >= 2 images per batch, got {min(cfg['batch_size'], len(data))} "
            f"({len(data)} images)"
        )

    run = {
        "cfg": cfg,
        "split": split,
        "ids": ids,
        "classes": ds.classes,
        "labels": labels_source,
        "labels_sha256": labels_hash,
    }
    meta = {
        "arch": arch,
        "classes": list(ds.classes),
        "mean": list(model.mean),
        "std": list(model.std),
        "stride": model.stride,
        "split": split,
        "labels": labels_source,
        "config": cfg,
    }
    what = f"{cfg['model']}/{cfg['backbone']} on {len(data)} images of '{split}' (labels: {labels_source})"
    history = engine.fit(
        model,
        SegmentationObjective(data, engine.ctx),
        run=run,
        meta=meta,
        out_model=out_model,
        out_history_csv=out_history_csv,
        checkpoint_dir=checkpoint_dir,
        what=what,
    )
    return {
        "images": len(data),
        "epochs": cfg["epochs"],
        "final_loss": history[-1]["loss"],
        "final_pixel_acc": history[-1]["pixel_acc"],
    }
