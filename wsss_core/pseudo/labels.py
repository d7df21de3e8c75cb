"""CAMs -> pseudo-label PNGs: IRN's "confident regions" recipe.

A single threshold on the CAMs forces a decision on every pixel, including the
band around each object where the CAM is neither clearly on nor clearly off. Like
IRN, we take two label maps instead: a strict one at ``threshold + fg_margin``
(its foreground is confident foreground) and a lenient one at
``threshold - bg_margin`` (its background is confident background). Each is
optionally refined by a dense CRF restricted to the image's own labels. Pixels
that are foreground in the strict map keep its class; pixels that are background
in both maps are background (0); everything between is void (255), so training
on the result ignores the uncertain band rather than learning a guess.

Reads the CAM store (:mod:`wsss_core.cams.store`), writes one palette PNG per image
of the split into a folder that appears only when every image is done. That dataset
loop (:func:`write_label_folder`) is shared with the saliency recipe
(:mod:`wsss_core.pseudo.saliency_labels`), which passes its own per-image function.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from wsss_core.cams.evaluate import cam_labels
from wsss_core.cams.store import CAMReader, check_store_covers
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset, voc_palette
from wsss_core.fileio import atomic_dir, save_label_png
from wsss_core.parallel import fork_map_chunks
from wsss_core.pseudo.crf import crf_labels
from wsss_core.pseudo.saliency_store import SaliencyReader


def _check_thresholds(threshold: float, fg_margin: float, bg_margin: float) -> None:
    for name, value in (("threshold", threshold), ("fg_margin", fg_margin), ("bg_margin", bg_margin)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"pseudo labels: {name} must be a finite number >= 0, got {value!r}")


def zone_cuts(threshold: float, fg_margin: float, bg_margin: float) -> tuple[float, float]:
    """(foreground cut, background cut) = (threshold + fg_margin, max(threshold - bg_margin, 0)).

    Rounded to 6 decimals like :func:`wsss_core.cams.evaluate.threshold_grid`, so 0.3 - 0.1 cuts at
    0.2 as configured and not at 0.19999999999999998 (a CAM value of exactly 0.2 is then background).
    """
    _check_thresholds(threshold, fg_margin, bg_margin)
    return round(threshold + fg_margin, 6), round(max(threshold - bg_margin, 0.0), 6)


def image_cams(
    stage: str, image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int]
) -> tuple[np.ndarray, list[int]]:
    """``(cams as an array, class ids as ints)``, after checking the maps are (K, H, W) at the image's size."""
    cams = np.asarray(cams)
    class_ids = [int(c) for c in class_ids]
    if cams.ndim != 3 or cams.shape[0] != len(class_ids) or cams.shape[1:] != np.shape(image)[:2]:
        raise ValueError(
            f"{stage}: CAMs of shape {cams.shape} for {len(class_ids)} class id(s) "
            f"and an image of shape {np.shape(image)}; expected (K, H, W) at image size"
        )
    return cams, class_ids


def pseudo_label(
    image: np.ndarray,
    cams: np.ndarray,
    class_ids: Sequence[int],
    *,
    threshold: float,
    fg_margin: float,
    bg_margin: float,
    crf: dict | None,
) -> np.ndarray:
    """(H, W) uint8 pseudo label: class ids where confident, 0 for confident background, 255 between.

    ``cams`` (K, H, W) in [0, 1] for the K ``class_ids`` of the image, ``image`` (H, W, 3)
    uint8 (used by the CRF only). ``crf``: CRF params (see :mod:`wsss_core.pseudo.crf`) or
    None for none. An image without class ids is all background.
    """
    fg_cut, bg_cut = zone_cuts(threshold, fg_margin, bg_margin)
    cams, class_ids = image_cams("pseudo labels", image, cams, class_ids)
    if not class_ids:
        return np.zeros(cams.shape[1:], np.uint8)
    fg = cam_labels(cams, class_ids, fg_cut)
    bg = cam_labels(cams, class_ids, bg_cut)
    if crf is not None:
        label_set = [0, *class_ids]
        fg = crf_labels(image, fg, label_set, crf)
        bg = crf_labels(image, bg, label_set, crf)
    out = fg.copy()
    out[fg == 0] = IGNORE_INDEX
    out[(fg == 0) & (bg == 0)] = 0
    return out


def check_map_size(store: Path, image_id: str, what: str, shape: tuple, dataset: VOCDataset, image: np.ndarray) -> None:
    """Raise naming ``store`` and the image file unless a stored map of ``shape`` is at the image's resolution."""
    if tuple(shape) != image.shape[:2]:
        raise ValueError(
            f"{store}: image '{image_id}': {what} {tuple(shape)} (H, W) but the image "
            f"{dataset.image_path(image_id)} is {image.shape[:2]}; maps must be stored at image resolution"
        )


def _label_images(
    cam_h5: str | None,
    root: str,
    ids: list[str],
    out_dir: str,
    *,
    label_fn,
    saliency_h5: str | None,
    walked_h5: str | None = None,
) -> list:
    """Write the pseudo labels of ``ids``; returns [images, all-void images].

    Opens its own readers (HDF5 handles must not cross forks). ``label_fn(image, cams,
    class_ids[, saliency=...][, walked=...])`` is the recipe, with its settings bound. Without a CAM store
    (``cam_h5`` None) the class ids are the image's labels and ``cams`` has no maps: (0, H, W).
    """
    dataset, palette = VOCDataset(root), voc_palette()
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(CAMReader(cam_h5)) if cam_h5 is not None else None
        saliency = stack.enter_context(SaliencyReader(saliency_h5)) if saliency_h5 is not None else None
        walked = stack.enter_context(CAMReader(walked_h5)) if walked_h5 is not None else None
        void = 0
        for image_id in ids:
            image = dataset.load_image(image_id)
            if reader is not None:
                cams, class_ids = reader.read(image_id)
                check_map_size(reader.path, image_id, "CAMs are", cams.shape[1:], dataset, image)
            else:
                cams, class_ids = np.zeros((0, *image.shape[:2]), np.float32), list(dataset.labels(image_id))
            inputs = {}
            if saliency is not None:
                inputs["saliency"] = saliency.read(image_id)
                check_map_size(saliency.path, image_id, "the saliency map is", inputs["saliency"].shape, dataset, image)
            if walked is not None:
                inputs["walked"], walked_ids = walked.read(image_id)
                if list(walked_ids) != list(class_ids):
                    raise ValueError(
                        f"{walked.path}: image '{image_id}': classes {list(walked_ids)}, but {list(class_ids)} "
                        f"in {reader.path}; the walked maps must come from these CAMs"
                    )
                check_map_size(walked.path, image_id, "walked maps are", inputs["walked"].shape[1:], dataset, image)
            labels = label_fn(image, cams, class_ids, **inputs)
            void += bool((labels == IGNORE_INDEX).all())
            save_label_png(Path(out_dir) / f"{image_id}.png", labels, palette)
    return [len(ids), void]


def write_label_folder(
    cam_h5: str | os.PathLike | None,
    dataset_root: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    *,
    label_fn: Callable[..., np.ndarray],
    workers: int,
    saliency_h5: str | os.PathLike | None = None,
    walked_h5: str | os.PathLike | None = None,
) -> dict:
    """The dataset loop every recipe shares: ``<out_dir>/<id>.png`` (VOC palette) for each image of ``split``.

    Checks first that the CAM store (if given: a recipe without CAMs passes None), the saliency
    store and the store of walked maps (each if given) cover the split, naming the file. ``label_fn`` must pickle (a module-level function or a
    partial of one) for ``workers > 1``, which spreads the images over forked processes (fork, not spawn:
    Snakemake scripts have no ``__main__`` guard); the output does not depend on ``workers``.
    ``out_dir`` is replaced as a whole, atomically: a crash leaves the old folder or none.
    Returns ``{"images", "all_void_images"}``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dataset = VOCDataset(dataset_root)
    ids = dataset.ids(split)
    if cam_h5 is not None:
        cam_h5 = Path(cam_h5)
        with CAMReader(cam_h5) as reader:  # checked before any work, and closed again before any fork
            check_store_covers(reader, dataset.classes, ids)
    if saliency_h5 is not None:
        saliency_h5 = Path(saliency_h5)
        with SaliencyReader(saliency_h5) as reader:
            reader.check_covers(ids)
    if walked_h5 is not None:
        if cam_h5 is None:
            raise ValueError(f"{walked_h5}: walked maps are read beside a CAM store, and none was given")
        walked_h5 = Path(walked_h5)
        with CAMReader(walked_h5) as reader:
            check_store_covers(reader, dataset.classes, ids)
    with atomic_dir(out_dir) as tmp:
        task = partial(
            _label_images,
            None if cam_h5 is None else str(cam_h5),
            str(dataset.root),
            out_dir=str(tmp),
            label_fn=label_fn,
            saliency_h5=None if saliency_h5 is None else str(saliency_h5),
            walked_h5=None if walked_h5 is None else str(walked_h5),
        )
        if workers > 1 and len(ids) > 1:
            counts = np.sum(fork_map_chunks(task, ids, workers), axis=0)
        else:
            counts = task(ids)
    return {"images": int(counts[0]), "all_void_images": int(counts[1])}


def _irn_label(image: np.ndarray, cams: np.ndarray, class_ids: Sequence[int], **settings) -> np.ndarray:
    # Looks pseudo_label up when called, in the worker, so a replaced one (tests) is the one used.
    return pseudo_label(image, cams, class_ids, **settings)


def make_pseudo_labels(
    cam_h5: str | os.PathLike,
    dataset_root: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    *,
    threshold: float,
    fg_margin: float,
    bg_margin: float,
    crf: dict | None,
    workers: int = 1,
) -> dict:
    """Write ``<out_dir>/<id>.png`` (VOC palette, 255 = void) for every image of ``split``.

    See :func:`write_label_folder` for atomicity, checks and ``workers``.
    Returns ``{"images", "threshold", "fg_threshold", "bg_threshold", "crf", "seconds"}``.
    """
    start = time.perf_counter()
    fg_cut, bg_cut = zone_cuts(threshold, fg_margin, bg_margin)
    settings = dict(threshold=threshold, fg_margin=fg_margin, bg_margin=bg_margin, crf=crf)
    done = write_label_folder(
        cam_h5, dataset_root, split, out_dir, label_fn=partial(_irn_label, **settings), workers=workers
    )
    return {
        "images": done["images"],
        "threshold": float(threshold),
        "fg_threshold": fg_cut,
        "bg_threshold": bg_cut,
        "crf": crf is not None,
        "seconds": round(time.perf_counter() - start, 3),
    }
