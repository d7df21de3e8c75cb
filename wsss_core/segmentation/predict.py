"""Stage 6b: label maps of a split from the trained segmentation network.

Each image goes through the network at every scale, as is and mirrored; the logits are
resized back to the image size, turned into softmax probabilities and averaged (mirrored
ones flipped back first). Averaging probabilities rather than logits keeps one
over-confident scale from outvoting the others. Optionally a dense CRF refines the
averaged probabilities before the argmax. Every image becomes ``<out_dir>/<id>.png``, a
VOC palette PNG whose pixel values are class ids, and the folder appears only complete.

The CRF is single-threaded CPU work that costs more than the network itself on a GPU, so
with ``workers > 1`` it runs, together with the PNG writing, in forked worker processes
while the parent keeps the network busy.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss_core.data.transforms import normalize
from wsss_core.data.voc_layout import VOCDataset, voc_palette
from wsss_core.devices import select_device
from wsss_core.fileio import atomic_dir, save_label_png
from wsss_core.models.deeplab import load_segmenter

log = logging.getLogger(__name__)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W); antialiased when shrinking, so fine detail averages instead of aliasing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def _check_scales(scales) -> list[float]:
    scales = [float(s) for s in scales]
    if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"argument scales: expected a non-empty list of positive numbers, got {scales}")
    return scales


def network_scales(meta: dict, scales) -> list[float]:
    """The scales the network sees: ``scales`` (evaluation.scales) times the segmentation.input_scale it
    was trained with (1.0 for models saved before the key existed)."""
    factor = float(meta.get("config", {}).get("input_scale", 1.0))
    return [s * factor for s in _check_scales(scales)]


@torch.inference_mode()
def predict_probs(
    model,
    image: np.ndarray,
    mean,
    std,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(C, H, W) float32 softmax probabilities on ``device`` for one RGB uint8 image (H, W, 3).

    ``model`` (in eval mode, on ``device``) maps a normalised (B, 3, h, w) batch to logits
    (B, C, h, w). The result is the mean over ``scales`` and, if ``flip``, the mirrored image.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"argument image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    scales = _check_scales(scales)
    height, width = image.shape[:2]
    # uint8 to the device first: a quarter of the bytes of float32 on the host-to-GPU copy
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float().div_(255)
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        xs = normalize(_resize(x, size), mean, std)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs  # both views in one forward pass
        logits = model(batch).float()
        if logits.ndim != 4 or logits.shape[0] != batch.shape[0]:
            raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for input {tuple(batch.shape)}")
        if flip:
            logits = torch.cat([logits[:1], logits[1:].flip(-1)])
        probs = _resize(logits, (height, width)).softmax(1).sum(0)
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def check_classes(meta: dict, dataset: VOCDataset, model_path) -> None:
    """The network's class list must be the dataset's, in the same order (a class id means one thing)."""
    if list(meta["classes"]) != list(dataset.classes):
        raise ValueError(
            f"{model_path}: trained on classes {list(meta['classes'])}, "
            f"dataset {dataset.root} has {list(dataset.classes)}"
        )


def _load_crf() -> Callable:
    from wsss_core.pseudo.crf import crf_probs  # lazy: the CRF module belongs to the pseudo-label stage

    return crf_probs


def _crf_and_save(image: np.ndarray, probs: np.ndarray, crf: dict, path: Path, crf_fn: Callable | None = None) -> None:
    """Refine ``probs`` with the dense CRF, write the argmax as a palette PNG (runs in a worker or the parent)."""
    refined = (crf_fn or _load_crf())(image, probs, crf)
    save_label_png(path, np.asarray(refined).argmax(0).astype(np.uint8), voc_palette())


def _worker_init() -> None:
    # A forked child that enters an OpenMP region of the parent's pool hangs (libgomp is not fork-safe);
    # with one thread torch never opens a parallel region, so a CRF that uses torch ops is safe too.
    torch.set_num_threads(1)


def _predict_with_model(
    model,
    meta: dict,
    dataset_root,
    split: str,
    out_dir,
    *,
    scales,
    flip: bool,
    crf: dict | None,
    device: torch.device | str = "cpu",
    workers: int = 1,
    model_path="the model",
    crf_fn: Callable | None = None,
) -> dict:
    """:func:`predict_split` after loading: ``model`` and ``meta`` as :func:`load_segmenter` returns them.

    ``crf_fn`` replaces ``wsss_core.pseudo.crf.crf_probs`` (tests); it must be picklable for ``workers > 1``.
    """
    if crf is not None and not isinstance(crf, dict):
        raise TypeError(f"argument crf: expected a dict of CRF parameters or None, got {type(crf).__name__}")
    scales = network_scales(meta, scales)
    start = time.perf_counter()
    dataset = VOCDataset(dataset_root)
    check_classes(meta, dataset, model_path)
    ids = dataset.ids(split)
    if not ids:
        raise ValueError(f"{dataset.split_file(split)}: split '{split}' lists no images")
    if crf is not None and crf_fn is None:
        crf_fn = _load_crf()  # fail before any work when the CRF module is missing
    parallel = crf is not None and workers > 1 and len(ids) > 1
    palette = voc_palette()
    model.eval()
    with atomic_dir(out_dir) as tmp:
        # Fork, not spawn (Snakemake scripts have no __main__ guard), and fork every worker now, before
        # the first image, rather than in the middle of inference. The pool is closed (every PNG
        # written) before atomic_dir renames the folder into place.
        pool = None
        if parallel:
            fork = multiprocessing.get_context("fork")
            pool = ProcessPoolExecutor(workers, mp_context=fork, initializer=_worker_init)
        try:
            if pool is not None:
                pool.submit(int).result()  # with fork, the first submit starts every worker
            pending: deque[Future] = deque()
            # Photos come in many sizes and every scale makes new input shapes; cuDNN plans each new shape
            # anew (see wsss_core/cams/infer.py for the measurement), so PyTorch's own kernels run instead.
            with torch.backends.cudnn.flags(enabled=False):
                for image_id in tqdm(ids, desc=f"predict {split}", mininterval=10, ascii=True):
                    image = dataset.load_image(image_id)
                    probs = predict_probs(
                        model, image, meta["mean"], meta["std"], scales=scales, flip=flip, device=device
                    )
                    if probs.shape[0] != dataset.num_classes:
                        raise ValueError(
                            f"{model_path}: {probs.shape[0]} output channels for "
                            f"{dataset.num_classes} classes (image '{image_id}')"
                        )
                    path = tmp / f"{image_id}.png"
                    if crf is None:
                        save_label_png(path, probs.argmax(0).to(torch.uint8).cpu().numpy(), palette)
                    elif pool is None:
                        _crf_and_save(image, probs.cpu().numpy(), crf, path, crf_fn)
                    else:
                        # Bounded queue: a slow CRF must not pile up every image's probabilities in memory.
                        while len(pending) >= 2 * workers:
                            pending.popleft().result()
                        pending.append(pool.submit(_crf_and_save, image, probs.cpu().numpy(), crf, path, crf_fn))
            while pending:
                pending.popleft().result()  # re-raises a worker's error here
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start
    log.info("wrote %d label maps to %s in %.1f s", len(ids), out_dir, seconds)
    return {
        "images": len(ids),
        "seconds": round(seconds, 3),
        "crf": crf is not None,
        "crf_workers": workers if parallel else (1 if crf is not None else 0),
        "device": str(device),
        "scales": scales,
        "flip": bool(flip),
    }


def predict_split(
    model_path,
    dataset_root,
    split: str,
    out_dir,
    *,
    scales,
    flip: bool,
    crf: dict | None,
    threads: int = 1,
    device: str = "auto",
    workers: int = 1,
) -> dict:
    """Write ``<out_dir>/<id>.png`` (argmax of the averaged probabilities, after the CRF if ``crf`` is a
    dict of its parameters) for every image of ``split``. Returns ``{"images", "seconds", ...}``."""
    device = select_device(device)
    torch.set_num_threads(max(1, threads))
    model, meta = load_segmenter(model_path, device)
    return _predict_with_model(
        model,
        meta,
        dataset_root,
        split,
        out_dir,
        scales=scales,
        flip=flip,
        crf=crf,
        device=device,
        workers=workers,
        model_path=model_path,
    )
