"""Stage 2: train the classifier from image-level labels only.

``method`` picks the network and what it learns from (an "objective": data + loss):
``cam``, backbone -> 1x1 class conv -> global average pooling on single images; or
``coattention``, the same plus co-attention heads trained on pairs of images sharing a
class (``train/coattention.py``). Both use multilabel soft-margin losses, and both take the
add-ons of ``train/variants.py``: extra loss terms on the single-image CAMs (Puzzle-CAM,
binomial importance sampling + feature similarity) and adversarial erasing (the training images
of a later round, with what earlier rounds' CAMs found painted over). All share this one
loop: SGD with momentum and a poly learning-rate decay (new layers at
``new_layer_lr_mult`` times the backbone's rate), checkpointed every epoch and resumed
after a kill. Every hyper-parameter comes from the ``classifier`` section of the config.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from wsss_core.data.transforms import Augment
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.models.classifier import ARCH_KEYS, build_classifier
from wsss_core.models.coattention import TARGET
from wsss_core.train.addons import add_terms, loss_addons
from wsss_core.train.checkpoint import fingerprint, resume, save_epoch, save_final, seed_everything
from wsss_core.train.coattention import CoAttentionObjective, ImageSource
from wsss_core.train.distributed import LossModule, setup
from wsss_core.train.erasing import ErasedDataset
from wsss_core.train.loop import (StateBundle, autocast, grad_scaler, memory_format, optimizer_step,
                                 poly_lambda, sgd_two_groups, step_lambda)  # fmt: skip

log = logging.getLogger(__name__)


class LabelledImages(Dataset):
    """(augmented image, multi-hot labels) for the ids of one split."""

    def __init__(self, dataset: VOCDataset, ids: list[str], augment: Augment):
        self.dataset, self.ids, self.augment = dataset, ids, augment
        self.labels = torch.from_numpy(dataset.label_matrix(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.augment(self.dataset.load_image(self.ids[index])), self.labels[index]


class CAMObjective:
    """Single images, multilabel soft-margin loss of the GAP'd CAMs against the image's labels,
    plus the terms of the loss add-ons."""

    def __init__(self, data: LabelledImages, addons: list = ()):
        self.data, self.addons = data, list(addons)

    def __len__(self) -> int:
        return len(self.data)

    def epoch_data(self, epoch: int) -> tuple[Dataset, bool]:
        return self.data, True  # the loader shuffles

    def loss(self, model, batch, epoch: int, progress: float, device: torch.device) -> dict:
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        if not self.addons:  # GAP before the 1x1 conv: the same logits, cheaper
            return {"total": F.multilabel_soft_margin_loss(model(images), labels)}
        cams = model.cams(images)
        terms = {"cls": F.multilabel_soft_margin_loss(cams.mean(dim=(2, 3)), labels)}
        return add_terms({**terms, "total": terms["cls"]}, self.addons, model, images, labels, cams, progress)


def architecture(cfg: dict) -> dict:
    """The ARCH_KEYS of a ``classifier`` config section, plus the co-attention image domains."""
    arch = {k: cfg[k] for k in ARCH_KEYS}
    if cfg["method"] == "coattention":
        arch["domains"] = [TARGET] + [s["domain"] for s in cfg["coattention"]["extra_sources"]]
    return arch


def image_sources(dataset: VOCDataset, split: str, cfg: dict) -> list[ImageSource]:
    """The target split, then every extra source of ``classifier.coattention.extra_sources``."""
    sources = [ImageSource(TARGET, dataset, dataset.ids(split))]
    for i, extra in enumerate(cfg["coattention"]["extra_sources"]):
        other = VOCDataset(extra["root"])
        if list(other.classes) != list(dataset.classes):
            raise ValueError(f"config key classifier.coattention.extra_sources[{i}]: {other.root} has classes "
                             f"{list(other.classes)}, the dataset {list(dataset.classes)}")  # fmt: skip
        sources.append(ImageSource(extra["domain"], other, other.ids(extra["split"])))
    return sources


def method_settings(cfg: dict) -> dict:
    """``cfg`` with the settings of its method and add-ons in place of the shared ones (when set):

    - ``+puzzle``: backbone lr at most ``puzzle.lr``, BatchNorm mode ``puzzle.frozen_bn``. The tile pass doubles
      the classification gradient; with frozen BatchNorm EfficientNet-Lite0's features then die (README, Results).
    - ``coattention``: its own ``epochs``/``batch_size``/``lr`` (these win over the puzzle lr): a pair step costs
      several single-image steps, the method's reference schedule (15 epochs of 5 pairs) is not the CAM
      baseline's, and its five summed loss terms need a smaller step.
    """
    own = {}
    if "puzzle" in cfg.get("addons", []):
        puzzle = cfg["puzzle"]
        if puzzle.get("lr") is not None:
            own["lr"] = min(cfg["lr"], puzzle["lr"])
        if puzzle.get("frozen_bn") is not None:
            own["frozen_bn"] = puzzle["frozen_bn"]
    if cfg["method"] == "coattention":
        own.update({k: v for k in ("epochs", "batch_size", "lr") if (v := cfg["coattention"].get(k)) is not None})
    return {**cfg, **own} if own else cfg


def training_images(ds: VOCDataset, split: str, cfg: dict, erase_cams, mean) -> VOCDataset:
    """The dataset to train on: as it is, or, in a later adversarial-erasing round, with the regions of the
    earlier rounds' CAM stores ``erase_cams`` painted over in the backbone's mean colour."""
    erasing = "erasing" in cfg.get("addons", [])
    if bool(erase_cams) != erasing:
        raise ValueError("adversarial erasing: the CAM stores of earlier rounds are needed exactly when "
                         f"classifier add-ons include erasing (add-ons {cfg.get('addons', [])}, "
                         f"{len(erase_cams or [])} store(s))")  # fmt: skip
    if not erasing:
        return ds
    # the mean colour: zero after the backbone's normalisation, as the crop's padding
    erased = ErasedDataset(ds.root, erase_cams, cfg["erasing"]["threshold"], [round(255 * m) for m in mean])
    erased.check_stores(erased.ids(split))
    return erased


def train_classifier(dataset_root, split: str, cfg: dict, *, out_model, out_history_csv, checkpoint_dir,
                     erase_cams=(), threads: int = 1, device: str = "auto") -> dict:  # fmt: skip
    """Train on ``split`` of the dataset with the ``classifier`` config section ``cfg``.

    ``erase_cams``: CAM stores of the earlier adversarial-erasing rounds (only with the erasing add-on).
    Run by ``torchrun`` (see ``train/distributed.py``), each process trains on its share of every global batch.
    """
    cfg = method_settings(cfg)
    ctx = setup(device)
    device = ctx.device
    torch.set_num_threads(max(1, threads // ctx.world))
    seed_everything(cfg["seed"])
    ds = VOCDataset(dataset_root)
    arch = architecture(cfg)
    model = build_classifier(arch, ds.num_classes - 1, weights=cfg["weights"], weights_dir=cfg["weights_dir"],
                             frozen_bn=cfg["frozen_bn"]).to(device, memory_format=memory_format(device, cfg["channels_last"]))  # fmt: skip
    bb = model.backbone
    ds = training_images(ds, split, cfg, list(erase_cams), bb.mean)
    augment = Augment(cfg["crop_size"], tuple(cfg["resize_long"]), tuple(bb.mean), tuple(bb.std),
                      flip=cfg["flip"], color_jitter=cfg["color_jitter"])  # fmt: skip
    addons = loss_addons(cfg, bb.stride, bb.mean, bb.std)
    if cfg["method"] == "cam":
        sources = [ImageSource(TARGET, ds, ds.ids(split))]
        objective = CAMObjective(LabelledImages(ds, sources[0].ids, augment), addons)
    else:
        sources = image_sources(ds, split, cfg)
        objective = CoAttentionObjective(sources, augment, cfg, addons)
    batch_size = min(cfg["batch_size"], len(objective))
    ctx.per_process_batch(batch_size, "classifier.batch_size")
    steps_per_epoch = len(objective) // batch_size
    total_steps = steps_per_epoch * cfg["epochs"]

    pretrained, new = model.param_groups()
    optimizer = sgd_two_groups(pretrained, new, lr=cfg["lr"], new_layer_lr_mult=cfg["new_layer_lr_mult"],
                               momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])  # fmt: skip
    if cfg["lr_policy"] == "step":
        decay = step_lambda(steps_per_epoch, cfg["lr_decay_epochs"], cfg["lr_decay_factor"])
    else:
        decay = poly_lambda(total_steps, cfg["poly_power"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    scaler = grad_scaler(device, cfg["amp"], cfg["amp_dtype"])
    schedule = StateBundle(scheduler=scheduler, scaler=scaler)
    # the loss as one module's forward: DistributedDataParallel synchronises what runs in a forward
    # (co-attention calls several sub-networks; its contrastive heads idle in the first epochs)
    step = ctx.wrap(LossModule(model, objective.loss), find_unused_parameters=cfg["method"] == "coattention")

    erased = ds.fingerprints() if isinstance(ds, ErasedDataset) else []
    settings_hash = fingerprint({"cfg": cfg, "split": split, "ids": {s.domain: s.ids for s in sources},
                                 "classes": ds.classes, **({"erased": erased} if erased else {})})  # fmt: skip
    checkpoint = Path(checkpoint_dir) / "last.pt"
    history, start_epoch = resume(checkpoint, settings_hash, model=model, optimizer=optimizer, scheduler=schedule)
    if start_epoch:
        log.info("resumed from %s after epoch %d", checkpoint, start_epoch)
    ctx.decorrelate(cfg["seed"], start_epoch)
    log.info("training %s (%s, BatchNorm %s, lr %g) on %d %s of '%s', %d epochs x %d steps, device %s, %d process(es)",
             "+".join([cfg["method"], *cfg.get("addons", [])]), cfg["backbone"],
             "frozen" if cfg["frozen_bn"] else "trained", cfg["lr"], len(objective),
             "images" if cfg["method"] == "cam" else "pairs", split, cfg["epochs"], steps_per_epoch, device,
             ctx.world)  # fmt: skip

    for epoch in range(start_epoch, cfg["epochs"]):
        data, shuffle = objective.epoch_data(epoch)
        loader = ctx.loader(data, batch_size, shuffle=shuffle, seed=cfg["seed"], epoch=epoch, num_workers=cfg["num_workers"])
        model.train()
        start, sums, seen = time.perf_counter(), {}, 0
        for i, batch in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", mininterval=10,
                                       ascii=True, disable=not ctx.is_main)):  # fmt: skip
            progress = (epoch * steps_per_epoch + i) / total_steps  # schedules of the add-ons
            with autocast(device, cfg["amp"], cfg["amp_dtype"]):
                terms = step(batch, epoch, progress, device)
            optimizer_step(terms["total"].float(), optimizer, scaler, scheduler)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(batch[0])
            seen += len(batch[0])
        sums = ctx.sum({**sums, "": seen})
        seen = sums.pop("")
        means = {name: round(value / max(seen, 1), 6) for name, value in sums.items()}
        record = {"epoch": epoch + 1, "loss": means.pop("total", float("nan")), "lr": optimizer.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - start, 2), **{f"loss_{k}": v for k, v in means.items()}}  # fmt: skip
        history.append(record)
        log.info("epoch %d: loss %.4f, %.1f s", record["epoch"], record["loss"], record["seconds"])
        save_epoch(ctx, checkpoint, model=model, optimizer=optimizer, scheduler=schedule, epoch=epoch + 1,
                   settings_hash=settings_hash, history=history)  # fmt: skip

    meta = {"arch": arch, "classes": list(ds.classes), "stride": bb.stride,
            "mean": list(bb.mean), "std": list(bb.std), "split": split, "config": cfg}  # fmt: skip
    save_final(ctx, out_model, model, meta, out_history_csv, history, checkpoint)
    return {"images": len(objective), "epochs": cfg["epochs"], "final_loss": history[-1]["loss"]}
