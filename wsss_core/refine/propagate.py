"""Apply a trained AffinityNet to a split: random-walk every image's CAMs (PSA's ``infer_aff``).

Per image: embed the image (zero-padded after normalisation to a multiple of the stride,
i.e. padded with the mean colour, as the training crops are), random-walk the CAM store's
maps on the embedding's grid (:func:`wsss_core.refine.random_walk.propagate_cams`), and write

* ``out_h5``: a CAM store of the walked foreground maps at image resolution, each divided by
  its maximum, so the CAM evaluation (threshold sweep) and the pseudo-label rules take them
  exactly as they take CAMs (the workflow's random_walk labels: IRN's threshold on them);
* optionally ``<out_dir>/<id>.png``: PSA's label map, the argmax of the walked
  [(1 - max CAM)^alpha, CAMs] (VOC palette; 0 background, class ids).

Both appear only when every image is done. ``workers > 1`` forks CPU processes, each with its
own model and HDF5 handles, writing its chunk to a part store that is then merged in split
order, so the result does not depend on ``workers``. On CUDA one process does all images.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss_core.cams.infer import prepare
from wsss_core.cams.store import CAMReader, CAMWriter, check_store_covers
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset, voc_palette
from wsss_core.devices import select_device
from wsss_core.fileio import atomic_dir, file_sha256, save_label_png
from wsss_core.metrics import roc_auc
from wsss_core.models.affinitynet import load_affinitynet
from wsss_core.parallel import fork_map_chunks
from wsss_core.pseudo.labels import check_map_size
from wsss_core.refine.random_walk import grid_labels, pair_affinities, pair_indices, pair_labels, propagate_cams

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_image(model, image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(C, ceil(H / s), ceil(W / s)) fp32 embedding of an (H, W, 3) uint8 image padded to a multiple of s."""
    stride = model.backbone.stride
    x = prepare(torch.from_numpy(image).permute(2, 0, 1)[None].to(device), model.backbone.mean, model.backbone.std)
    height, width = image.shape[:2]
    x = F.pad(x, (0, -width % stride, 0, -height % stride))  # 0 = the mean colour after normalisation
    return model(x)[0].float()


@torch.no_grad()
def labelled_pairs(
    model, radius: int, image: np.ndarray, mask: np.ndarray, device: torch.device
) -> dict[str, torch.Tensor]:
    """Affinities of one photo's pairs within ``radius`` cells (those of training and of the walk; the model's
    ``meta["radius"]``) sorted by a label map: ``{"bg_pos", "fg_pos", "neg"}`` -> 1-D tensors (both ends background, the same class, different labels), each cell
    labelled by ``mask``'s pixel at its centre; cells on void (255) or on the padding are in none."""
    stride = model.backbone.stride
    embedding = embed_image(model, image, device)
    h, w = embedding.shape[1:]
    labels = torch.from_numpy(np.asarray(mask, np.int64)).to(device)
    labels = F.pad(labels, (0, w * stride - labels.shape[1], 0, h * stride - labels.shape[0]), value=IGNORE_INDEX)
    ind_from, ind_to = pair_indices(h, w, radius)
    kinds = pair_labels(grid_labels(labels[None], stride), ind_from.to(device), ind_to.to(device))
    aff = pair_affinities(embedding[None], radius)
    return {name: aff[kind].cpu() for name, kind in zip(("bg_pos", "fg_pos", "neg"), kinds)}


def pair_separation(
    model, radius: int, dataset: VOCDataset, ids, device, *, max_pairs: int = 300_000, seed: int = 0
) -> dict:
    """How well the affinities of photos ``ids`` (with masks) follow their labels (:func:`labelled_pairs`):
    mean affinity per kind of pair (``bg_pos``, ``fg_pos``, ``neg``), their ``counts``, ``neg_high`` (the
    share of different-label pairs at or above 0.5) and ``auc``, the ROC AUC of same-label against
    different-label pairs (on at most ``max_pairs`` of each, a seeded sample)."""
    kinds = ("bg_pos", "fg_pos", "neg")
    found = [labelled_pairs(model, radius, dataset.load_image(i), dataset.load_mask(i), device) for i in ids]
    pairs = {kind: torch.cat([f[kind] for f in found]).numpy() for kind in kinds}
    same, diff = np.concatenate([pairs["bg_pos"], pairs["fg_pos"]]), pairs["neg"]
    rng = np.random.default_rng(seed)
    sample = [a if len(a) <= max_pairs else rng.choice(a, max_pairs, replace=False) for a in (same, diff)]
    return {
        **{kind: float(pairs[kind].mean()) for kind in kinds},
        "counts": [len(pairs[kind]) for kind in kinds],
        "neg_high": float((diff >= 0.5).mean()),
        "auc": roc_auc(*sample),
    }


def _walk_images(
    cam_h5: str,
    root: str,
    model_path: str,
    ids: list[str],
    *,
    out_dir: str | None,
    part_h5: str | None,
    part_dir: str | None,
    store: dict,
    walk: dict,
    device: str,
    threads: int,
) -> str:
    """Walk ``ids`` into PNGs in ``out_dir`` (None: none) and a CAM store ``part_h5`` (default ``<part_dir>/<first id>.h5``);
    model and HDF5 handles are this process's own. Returns the store's path."""
    part_h5 = part_h5 or str(Path(part_dir) / f"{ids[0]}.h5")
    torch.set_num_threads(max(1, threads))
    device = torch.device(device)
    model, meta = load_affinitynet(model_path, device)
    dataset, palette = VOCDataset(root), voc_palette()
    with CAMReader(cam_h5) as reader, CAMWriter(part_h5, classes=dataset.classes, **store) as writer:
        for image_id in ids:
            cams, class_ids = reader.read(image_id)
            image = dataset.load_image(image_id)
            check_map_size(reader.path, image_id, "CAMs are", cams.shape[1:], dataset, image)
            embedding = embed_image(model, image, device)
            labels, walked = propagate_cams(
                embedding, torch.from_numpy(cams), class_ids, stride=meta["stride"], radius=meta["radius"], **walk
            )
            if out_dir is not None:
                save_label_png(Path(out_dir) / f"{image_id}.png", labels, palette)
            writer.write(image_id, walked, class_ids)
    return part_h5


def _merge(parts: list[str], out_h5: Path, classes, store: dict) -> None:
    """Copy the part stores, in order, into one store at ``out_h5`` (float16 values round-trip exactly)."""
    with CAMWriter(out_h5, classes=classes, **store) as writer:
        for part in parts:
            with CAMReader(part) as reader:
                for image_id in reader.ids():
                    writer.write(image_id, *reader.read(image_id))


def propagate_split(
    cam_h5: str | os.PathLike,
    dataset_root: str | os.PathLike,
    split: str,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    out_h5: str | os.PathLike,
    *,
    beta: float = 8,
    logt: int = 8,
    alpha: float = 16,
    workers: int = 1,
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """Random-walk the CAMs of every image of ``split`` with the AffinityNet ``model_path``.

    ``beta``: affinity exponent; ``logt``: 2^logt walk steps; ``alpha``: background score exponent
    (only the label PNGs depend on it; ``out_dir`` None writes none). Returns ``{"images", "beta", "logt", "alpha", "radius", "seconds"}``.
    """
    start = time.perf_counter()
    if not (beta > 0 and alpha > 0 and isinstance(logt, int) and 0 <= logt <= 16):
        raise ValueError(
            f"random walk: need beta > 0, alpha > 0 and an integer logt in 0..16, "
            f"got beta={beta!r}, alpha={alpha!r}, logt={logt!r}"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    device = select_device(device)
    dataset = VOCDataset(dataset_root)
    ids = dataset.ids(split)
    meta = torch.load(model_path, map_location="cpu", weights_only=True)["meta"]
    if meta["classes"] != list(dataset.classes):
        raise ValueError(
            f"{model_path}: AffinityNet trained on classes {meta['classes']}, dataset "
            f"{dataset.root} has {list(dataset.classes)}"
        )
    with CAMReader(cam_h5) as reader:  # checked before any work, and closed again before any fork
        check_store_covers(reader, dataset.classes, ids)
        source = reader.attrs
    walk = dict(beta=beta, logt=logt, alpha=alpha)
    store = dict(
        scales=source["scales"],
        stride=meta["stride"],
        checkpoint_sha256=file_sha256(model_path),
        extra_attrs={
            "split": split,
            "refinement": "random_walk",
            "source_cams": str(cam_h5),
            "source_checkpoint_sha256": source["checkpoint_sha256"],
            "radius": meta["radius"],
            **walk,
        },
    )
    if device.type == "cuda" and workers > 1:
        log.info(
            "random walk on %s: one process (workers=%d ignored; forked processes cannot share CUDA)", device, workers
        )
        workers = 1
    out_h5 = Path(out_h5)
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    task = partial(
        _walk_images,
        str(cam_h5),
        str(dataset.root),
        str(model_path),
        store=store,
        walk=walk,
        device=str(device),
        threads=threads,
    )
    with atomic_dir(out_dir) if out_dir is not None else contextlib.nullcontext() as tmp:
        png_dir = None if tmp is None else str(tmp)
        if workers == 1 or len(ids) < 2:
            task(ids, out_dir=png_dir, part_h5=str(out_h5), part_dir=None)
        else:
            with tempfile.TemporaryDirectory(prefix=f".{out_h5.name}.parts-", dir=out_h5.parent) as parts:
                chunk_task = partial(task, out_dir=png_dir, part_h5=None, part_dir=parts)
                _merge(fork_map_chunks(chunk_task, ids, workers), out_h5, dataset.classes, store)
    log.info("random walk of %d images of '%s' -> %s, %s", len(ids), split, out_dir, out_h5)
    return {"images": len(ids), **walk, "radius": meta["radius"], "seconds": round(time.perf_counter() - start, 3)}
