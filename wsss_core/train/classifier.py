"""Stage 2: train the classifier from image-level labels only.

``method`` picks the network and what it learns from (an "objective": data + loss):
``cam``, backbone -> 1x1 class conv -> global average pooling on single images; or
``coattention``, the same plus co-attention heads trained on pairs of images sharing a
class (``train/coattention.py``). Both use multilabel soft-margin losses, and both take the
add-ons of ``wsss_core/plan.py``: extra loss terms on the single-image CAMs (Puzzle-CAM,
binomial importance sampling + feature similarity) and adversarial erasing (the training images
of a later round, with what earlier rounds' CAMs found painted over). The training loop is
``train/engine.py``'s: SGD with momentum and a poly or step learning-rate decay (new layers at
``new_layer_lr_mult`` times the backbone's rate), checkpointed every epoch and resumed
after a kill. Every hyper-parameter comes from the ``classifier`` section of the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsss_core.data.transforms import Augment
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.fileio import file_sha256
from wsss_core.models.cam_head import CAMNet
from wsss_core.models.classifier import ARCH_KEYS, build_classifier
from wsss_core.models.coattention import TARGET
from wsss_core.train.addons import add_terms, loss_addons
from wsss_core.train.coattention import CoAttentionObjective, ImageSource
from wsss_core.train.engine import Engine, Objective
from wsss_core.train.erasing import ErasedDataset


class LabelledImages(Dataset):
    """(augmented image, multi-hot labels) for the ids of one split."""

    def __init__(self, dataset: VOCDataset, ids: list[str], augment: Augment):
        self.dataset, self.ids, self.augment = dataset, ids, augment
        self.labels = torch.from_numpy(dataset.label_matrix(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.augment(self.dataset.load_image(self.ids[index])), self.labels[index]


class CAMObjective(Objective):
    """Single images, multilabel soft-margin loss of the GAP'd CAMs against the image's labels,
    plus the terms of the loss add-ons."""

    def __init__(self, data: LabelledImages, addons: list = ()):
        self.data, self.addons = data, list(addons)

    def forward(self, model, batch, epoch: int, progress: float, device: torch.device) -> dict:
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
        co = cfg["coattention"]
        arch["domains"] = [TARGET] + [s["domain"] for s in co["extra_sources"]]
        arch.update({k: co[k] for k in ("head_convs", "head_channels", "affinity", "temperature")})
    return arch


def image_sources(dataset: VOCDataset, split: str, cfg: dict) -> list[ImageSource]:
    """The target split, then every extra source of ``classifier.coattention.extra_sources``."""
    sources = [ImageSource(TARGET, dataset, dataset.ids(split))]
    for i, extra in enumerate(cfg["coattention"]["extra_sources"]):
        other = VOCDataset(extra["root"])
        if list(other.classes) != list(dataset.classes):
            raise ValueError(
                f"config key classifier.coattention.extra_sources[{i}]: {other.root} has classes "
                f"{list(other.classes)}, the dataset {list(dataset.classes)}"
            )
        sources.append(ImageSource(extra["domain"], other, other.ids(extra["split"])))
    return sources


def method_settings(cfg: dict) -> dict:
    """``cfg`` with the settings of its method and add-ons in place of the shared ones (when set):

    - ``+puzzle``: backbone lr at most ``puzzle.lr``, BatchNorm mode ``puzzle.frozen_bn``. The tile pass doubles
      the classification gradient; with frozen BatchNorm EfficientNet-Lite0's features then die (docs/results.md).
    - ``coattention``: its own ``epochs``/``batch_size``/``lr``/``weight_decay`` (these win over the puzzle lr) and
      its optimizer details (``nesterov``, ``bias_lr_mult``): a pair step costs several single-image steps, the
      method's reference schedule (15 epochs of 5 pairs) is not the CAM baseline's, and its five summed loss terms
      need a smaller step.
    """
    own = {}
    if "puzzle" in cfg.get("addons", []):
        puzzle = cfg["puzzle"]
        if puzzle.get("lr") is not None:
            own["lr"] = min(cfg["lr"], puzzle["lr"])
        if puzzle.get("frozen_bn") is not None:
            own["frozen_bn"] = puzzle["frozen_bn"]
    if cfg["method"] == "coattention":
        keys = ("epochs", "batch_size", "lr", "weight_decay", "nesterov", "bias_lr_mult")
        own.update({k: v for k in keys if (v := cfg["coattention"].get(k)) is not None})
    return {**cfg, **own} if own else cfg


def training_images(ds: VOCDataset, split: str, cfg: dict, erase_cams, mean) -> VOCDataset:
    """The dataset to train on: as it is, or, in a later adversarial-erasing round, with the regions of the
    earlier rounds' CAM stores ``erase_cams`` painted over in the backbone's mean colour."""
    erasing = "erasing" in cfg.get("addons", [])
    if bool(erase_cams) != erasing:
        raise ValueError(
            "adversarial erasing: the CAM stores of earlier rounds are needed exactly when "
            f"classifier add-ons include erasing (add-ons {cfg.get('addons', [])}, "
            f"{len(erase_cams or [])} store(s))"
        )
    if not erasing:
        return ds
    # the mean colour: zero after the backbone's normalisation, as the crop's padding
    erased = ErasedDataset(ds.root, erase_cams, cfg["erasing"]["threshold"], [round(255 * m) for m in mean])
    erased.check_stores(erased.ids(split))
    return erased


def warm_start(model: CAMNet, init_model) -> str:
    """Copy a trained plain-CAM classifier's backbone into ``model`` and, where the shapes match (a co-attention
    classifier without head convs), its class conv into both of the model's: ``classifier`` (single-image CAMs)
    and ``co_classifier`` (co-attention and contrastive maps, so every multi-round CAM), which would otherwise
    start at random. Returns the file's sha256."""
    payload = torch.load(init_model, map_location="cpu", weights_only=True)
    theirs = payload["meta"]["arch"]
    if theirs["method"] != "cam":
        raise ValueError(f"classifier.coattention.warm_start: {init_model} is a '{theirs['method']}' classifier")
    state = payload["state_dict"]
    backbone = {k.partition(".")[2]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(backbone)
    except RuntimeError as error:
        raise ValueError(
            f"classifier.coattention.warm_start: {init_model} ({theirs['backbone']}, output stride "
            f"{theirs['output_stride']}) does not fit this classifier's backbone: {str(error).splitlines()[0]}"
        ) from None
    if state["classifier.weight"].shape == model.classifier.weight.shape:  # both class convs read the same features
        for conv in (model.classifier, getattr(model, "co_classifier", None)):
            if conv is not None:  # (not filter(None, ...): a module's truth value is its len() where it has one)
                conv.weight.data.copy_(state["classifier.weight"])
    return file_sha256(init_model)


def train_classifier(
    dataset_root,
    split: str,
    cfg: dict,
    *,
    out_model,
    out_history_csv,
    checkpoint_dir,
    erase_cams=(),
    init_model=None,
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """Train on ``split`` of the dataset with the ``classifier`` config section ``cfg``.

    ``erase_cams``: CAM stores of the earlier adversarial-erasing rounds (only with the erasing add-on).
    ``init_model``: a trained plain-CAM classifier to start from (``classifier.coattention.warm_start``).
    Run by ``torchrun`` (see ``train/distributed.py``), each process trains on its share of every global batch.
    """
    cfg = method_settings(cfg)
    engine = Engine("classifier", cfg, threads=threads, device=device)
    ds = VOCDataset(dataset_root)
    arch = architecture(cfg)
    model = build_classifier(
        arch, ds.num_classes - 1, weights=cfg["weights"], weights_dir=cfg["weights_dir"], frozen_bn=cfg["frozen_bn"]
    )
    init_sha = warm_start(model, init_model) if init_model else None
    bb = model.backbone
    ds = training_images(ds, split, cfg, list(erase_cams), bb.mean)
    augment = Augment(
        cfg["crop_size"],
        tuple(cfg["resize_long"]),
        tuple(bb.mean),
        tuple(bb.std),
        flip=cfg["flip"],
        color_jitter=cfg["color_jitter"],
    )
    addons = loss_addons(cfg, bb.stride, bb.mean, bb.std)
    if cfg["method"] == "cam":
        sources = [ImageSource(TARGET, ds, ds.ids(split))]
        objective = CAMObjective(LabelledImages(ds, sources[0].ids, augment), addons)
    else:
        sources = image_sources(ds, split, cfg)
        objective = CoAttentionObjective(sources, augment, cfg, addons)

    erased = ds.fingerprints() if isinstance(ds, ErasedDataset) else []
    run = {
        "cfg": cfg,
        "split": split,
        "ids": {s.domain: s.ids for s in sources},
        "classes": ds.classes,
        **({"erased": erased} if erased else {}),
        **({"init_sha256": init_sha} if init_sha else {}),
    }
    meta = {
        "arch": arch,
        "classes": list(ds.classes),
        "stride": bb.stride,
        "mean": list(bb.mean),
        "std": list(bb.std),
        "split": split,
        "config": cfg,
    }
    what = (
        f"{'+'.join([cfg['method'], *cfg.get('addons', [])])} ({cfg['backbone']}, BatchNorm "
        f"{'frozen' if cfg['frozen_bn'] else 'trained'}, lr {cfg['lr']:g}) on {len(objective)} "
        f"{'images' if cfg['method'] == 'cam' else 'pairs'} of '{split}'"
    )
    # co-attention calls several sub-networks; its contrastive heads idle in the first epochs
    history = engine.fit(
        model,
        objective,
        run=run,
        meta=meta,
        out_model=out_model,
        out_history_csv=out_history_csv,
        checkpoint_dir=checkpoint_dir,
        what=what,
        find_unused_parameters=cfg["method"] == "coattention",
    )
    return {"images": len(objective), "epochs": cfg["epochs"], "final_loss": history[-1]["loss"]}
