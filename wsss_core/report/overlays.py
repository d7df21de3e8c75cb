"""The report's overlay figure: what every stage made of a few images, side by side.

One row per image: image | CAM | pseudo label | prediction | ground truth. The CAM column
is the maximum over the image's labelled classes as a heat map over the image; label maps
use the VOC palette (void 255 in its own colour) with a legend of the classes shown.
Columns without a source are left out, so the figure can be drawn after any stage.

Images are picked deterministically and so that the few rows show many classes: a pass
over the split takes each image that adds a class not shown yet, the first remaining
images fill the rest. The same split therefore always gives the same figure, and a
figure of four images is not four pictures of the same class.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from wsss_core.cams.store import CAMReader
from wsss_core.data.voc_layout import IGNORE_INDEX, VOCDataset, voc_palette
from wsss_core.fileio import atomic_file

_PALETTE = np.asarray(voc_palette(), np.uint8).reshape(256, 3)


def choose_images(dataset: VOCDataset, ids: Sequence[str], n_images: int) -> list[str]:
    """Up to ``n_images`` of ``ids``, in split order: those adding a new class first, then the first others."""
    if n_images < 1:
        raise ValueError(f"argument n_images: expected at least 1, got {n_images}")
    shown: set[int] = set()
    picked: list[str] = []
    all_classes = set(range(1, dataset.num_classes))
    for image_id in ids:
        if len(picked) == n_images or shown >= all_classes:
            break  # nothing left to add: stop reading labels (they may come from masks or XML)
        labels = set(dataset.labels(image_id))
        if labels - shown:
            picked.append(image_id)
            shown |= labels
    chosen = set(picked)
    picked += [i for i in ids if i not in chosen][: n_images - len(picked)]
    order = {image_id: index for index, image_id in enumerate(ids)}
    return sorted(picked, key=order.__getitem__)


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB in the VOC palette."""
    return _PALETTE[labels]


def _read_label_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label map not found")
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: mode {img.mode}, expected a palette (P) or L PNG of class ids")
        labels = np.asarray(img)
    if labels.shape != shape:
        raise ValueError(f"{path}: label map is {labels.shape} (H, W), its image is {shape}")
    return labels


def _cam_heat(reader: CAMReader, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    cams, _ = reader.read(image_id)
    if cams.shape[1:] != shape:
        raise ValueError(f"{reader.path}: image '{image_id}': CAMs are {cams.shape[1:]} (H, W), the image {shape}")
    return cams.max(0) if len(cams) else np.zeros(shape, np.float32)


def _model_predictor(model_path, dataset: VOCDataset, scales, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """image -> argmax label map of the segmentation network at ``model_path``."""
    import torch

    from wsss_core.devices import select_device
    from wsss_core.models.deeplab import load_segmenter
    from wsss_core.segmentation.predict import check_classes, network_scales, predict_probs

    device = select_device(device)
    model, meta = load_segmenter(model_path, device)
    check_classes(meta, dataset, model_path)
    model.eval()
    scales = network_scales(meta, scales)

    def predict(image: np.ndarray) -> np.ndarray:
        probs = predict_probs(model, image, meta["mean"], meta["std"], scales=scales, flip=True, device=device)
        return probs.argmax(0).to(torch.uint8).cpu().numpy()

    return predict


def _row_label(dataset: VOCDataset, image_id: str, width: int = 22) -> str:
    names = ", ".join(dataset.classes[c] for c in dataset.labels(image_id)) or "(no labels)"
    return "\n".join([image_id, *textwrap.wrap(names, width)])


def _render(
    dataset: VOCDataset,
    split: str,
    out_png,
    *,
    cam_h5=None,
    pseudo_dir=None,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    n_images: int = 4,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> list[str]:
    """:func:`render_overlays` with the prediction column from ``predict`` (image -> label map), if given."""
    ids = choose_images(dataset, dataset.ids(split), n_images)
    if not ids:
        raise ValueError(f"{dataset.split_file(split)}: split '{split}' lists no images")
    has_gt = any(dataset.has_mask(i) for i in ids)
    columns = ["image"] + ["CAM"] * (cam_h5 is not None) + ["pseudo label"] * (pseudo_dir is not None)
    columns += ["prediction"] * (predict is not None) + ["ground truth"] * has_gt
    reader = CAMReader(cam_h5) if cam_h5 is not None else None
    # Fixed panel size, no tight bounding box: the PNG is len(columns) x len(ids) panels, whatever the images.
    fig = Figure(figsize=(panel_inches * len(columns), panel_inches * len(ids)), layout="constrained")
    axes = fig.subplots(len(ids), len(columns), squeeze=False)
    shown_classes: set[int] = set()
    try:
        for row, image_id in enumerate(ids):
            image = dataset.load_image(image_id)
            shape = image.shape[:2]
            panels = {"image": image}
            if reader is not None:
                panels["CAM"] = _cam_heat(reader, image_id, shape)
            if pseudo_dir is not None:
                panels["pseudo label"] = _read_label_png(Path(pseudo_dir) / f"{image_id}.png", shape)
            if predict is not None:
                panels["prediction"] = np.asarray(predict(image), np.uint8)
                if panels["prediction"].shape != shape:
                    raise ValueError(f"prediction of image '{image_id}' is {panels['prediction'].shape}, image {shape}")
            if has_gt and dataset.has_mask(image_id):
                panels["ground truth"] = dataset.load_mask(image_id)
            for col, name in enumerate(columns):
                ax = axes[row, col]
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(name, fontsize=9)
                if col == 0:
                    ax.set_ylabel(_row_label(dataset, image_id), fontsize=7)
                if name not in panels:  # an image of the split without a mask
                    ax.text(0.5, 0.5, "no mask", ha="center", va="center", fontsize=8, transform=ax.transAxes)
                elif name == "image":
                    ax.imshow(image)
                elif name == "CAM":
                    ax.imshow(image)
                    ax.imshow(panels[name], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0, interpolation="nearest")
                else:
                    ax.imshow(colorize(panels[name]), interpolation="nearest")
                    shown_classes |= set(np.unique(panels[name]).tolist())
    finally:
        if reader is not None:
            reader.close()
    legend = [
        Patch(
            color=_PALETTE[c] / 255,
            label=dataset.classes[c] if c < dataset.num_classes else ("void" if c == IGNORE_INDEX else f"id {c}"),
        )
        for c in sorted(shown_classes)
    ]
    if legend:
        fig.legend(handles=legend, loc="outside lower center", ncols=min(len(legend), 6), fontsize=7, frameon=False)
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return ids


def render_overlays(
    dataset_root,
    split: str,
    out_png: str | os.PathLike,
    *,
    cam_h5=None,
    pseudo_dir=None,
    model_path=None,
    n_images: int = 4,
    scales: Sequence[float] = (1.0,),
    device: str = "auto",
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> list[str]:
    """Draw the overlay grid of ``n_images`` images of ``split`` to ``out_png``; return the ids shown.

    The PNG measures ``panel_inches * dpi`` pixels per row and per column.
    """
    dataset = VOCDataset(dataset_root)
    predict = _model_predictor(model_path, dataset, scales, device) if model_path is not None else None
    return _render(
        dataset,
        split,
        out_png,
        cam_h5=cam_h5,
        pseudo_dir=pseudo_dir,
        predict=predict,
        n_images=n_images,
        panel_inches=panel_inches,
        dpi=dpi,
    )
