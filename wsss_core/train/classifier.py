"""Stage 2: train the CAM classifier from image-level labels only.

backbone -> 1x1 class conv -> global average pooling, multilabel soft-margin loss,
SGD with momentum and a poly learning-rate decay (new layers at ``new_layer_lr_mult``
times the backbone's rate), checkpointed every epoch and resumed after a kill.
Every hyper-parameter comes from the ``classifier`` section of the config.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss_core.data.transforms import Augment
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.fileio import atomic_file
from wsss_core.models.backbones import build_backbone
from wsss_core.models.cam_head import CAMNet
from wsss_core.train.checkpoint import fingerprint, resume, save_checkpoint, seed_everything
from wsss_core.train.devices import select_device
from wsss_core.train.loop import epoch_generator, poly_lambda, sgd_two_groups, write_history_csv

log = logging.getLogger(__name__)

# Settings that define the architecture; stored with the weights so inference can rebuild it.
ARCH_KEYS = ("method", "backbone", "output_stride")


class LabelledImages(Dataset):
    """(augmented image, multi-hot labels) for the ids of one split."""

    def __init__(self, dataset: VOCDataset, ids: list[str], augment: Augment):
        self.dataset, self.ids, self.augment = dataset, ids, augment
        self.labels = torch.from_numpy(dataset.label_matrix(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.augment(self.dataset.load_image(self.ids[index])), self.labels[index]


def build_classifier(arch: dict, num_classes: int, weights: str = "random", weights_dir=None, frozen_bn=True):
    """The network described by ``arch`` (see ARCH_KEYS) over ``num_classes`` foreground classes."""
    if arch["method"] != "cam":
        raise ValueError(f"config key classifier.method: unknown method '{arch['method']}'")
    backbone = build_backbone(arch["backbone"], weights=weights, output_stride=arch["output_stride"],
                              frozen_bn=frozen_bn, weights_dir=weights_dir)  # fmt: skip
    return CAMNet(backbone, num_classes)


def load_classifier(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode, metadata) from a file written by :func:`train_classifier`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    model = build_classifier(meta["arch"], len(meta["classes"]) - 1)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), meta


def train_classifier(dataset_root, split: str, cfg: dict, *, out_model, out_history_csv, checkpoint_dir,
                     threads: int = 1, device: str = "auto") -> dict:  # fmt: skip
    """Train on ``split`` of the dataset with the ``classifier`` config section ``cfg``."""
    device = select_device(device)
    torch.set_num_threads(max(1, threads))
    seed_everything(cfg["seed"])
    ds = VOCDataset(dataset_root)
    ids = ds.ids(split)
    model = build_classifier({k: cfg[k] for k in ARCH_KEYS}, ds.num_classes - 1, weights=cfg["weights"],
                             weights_dir=cfg["weights_dir"], frozen_bn=cfg["frozen_bn"]).to(device)  # fmt: skip
    bb = model.backbone
    augment = Augment(cfg["crop_size"], tuple(cfg["resize_long"]), tuple(bb.mean), tuple(bb.std),
                      flip=cfg["flip"], color_jitter=cfg["color_jitter"])  # fmt: skip
    data = LabelledImages(ds, ids, augment)
    batch_size = min(cfg["batch_size"], len(data))
    steps_per_epoch = len(data) // batch_size
    total_steps = steps_per_epoch * cfg["epochs"]

    pretrained, new = model.param_groups()
    optimizer = sgd_two_groups(pretrained, new, lr=cfg["lr"], new_layer_lr_mult=cfg["new_layer_lr_mult"],
                               momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(total_steps, cfg["poly_power"]))

    settings_hash = fingerprint({"cfg": cfg, "split": split, "ids": ids, "classes": ds.classes})
    checkpoint = Path(checkpoint_dir) / "last.pt"
    history, start_epoch = resume(checkpoint, settings_hash, model=model, optimizer=optimizer, scheduler=scheduler)
    if start_epoch:
        log.info("resumed from %s after epoch %d", checkpoint, start_epoch)
    log.info("training %s on %d images of '%s', %d epochs x %d steps, device %s",
             cfg["backbone"], len(data), split, cfg["epochs"], steps_per_epoch, device)  # fmt: skip

    for epoch in range(start_epoch, cfg["epochs"]):
        # A per-epoch generator makes the data order and augmentations independent of resumes.
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                            num_workers=cfg["num_workers"], pin_memory=device.type == "cuda",
                            generator=epoch_generator(cfg["seed"], epoch))  # fmt: skip
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        for images, labels in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", mininterval=10, ascii=True):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.multilabel_soft_margin_loss(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(images)
            seen += len(images)
        record = {"epoch": epoch + 1, "loss": round(total / max(seen, 1), 6),
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
        history.append(record)
        log.info("epoch %d: loss %.4f, %.1f s", record["epoch"], record["loss"], record["seconds"])
        save_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch + 1,
                        settings_hash=settings_hash, history=history)  # fmt: skip

    meta = {"arch": {k: cfg[k] for k in ARCH_KEYS}, "classes": list(ds.classes), "stride": bb.stride,
            "mean": list(bb.mean), "std": list(bb.std), "split": split, "config": cfg}  # fmt: skip
    with atomic_file(out_model) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    write_history_csv(out_history_csv, history)
    checkpoint.unlink(missing_ok=True)  # the finished model supersedes it
    return {"images": len(data), "epochs": cfg["epochs"], "final_loss": history[-1]["loss"]}
