"""The embedded synthetic demo dataset: the pipeline's offline default.

It is built to reproduce the central difficulty of weakly supervised semantic
segmentation (WSSS), not to look pretty. Every object is a BODY drawn from one
appearance family shared by all classes (rounded blob, muted random colour,
random texture) plus a small class-specific PART (a saturated marker disc,
typically 5-10 % of the body, at a random place on it). Only the part tells the
class, so an image classifier learns the part and its CAM covers the part, not
the body, like real CAMs that fire on animal heads; the masks cover the whole
body. Class-free DISTRACTORS (bodies without a part) and textured backgrounds
are labelled background, so "foreground-looking = object" is wrong too.
Nothing but a marker is ever saturated, so no distractor looks like a part.

Output is a folder in the VOC 2012 layout (see :mod:`wsss_core.data.voc_layout`).
Image ``i`` depends only on ``(seed, i)`` and the drawing arguments, so output
is byte-identical for any ``workers`` and the first images of a larger set equal
those of a smaller one.
"""

from __future__ import annotations

import colorsys
import functools
import json
import math
import numbers
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from ..fileio import atomic_dir, save_label_png
from .voc_layout import IGNORE_INDEX, voc_palette

MAX_CLASSES = 20
TINY = dict(n_images=40, image_size=64, n_classes=4, seed=0, val_fraction=0.25, max_objects=4)
DEFAULT = dict(n_images=1000, image_size=128, n_classes=6, seed=0, val_fraction=0.2, max_objects=4)

_PALETTE = voc_palette()
_HUE_NAMES = tuple(
    "red orange yellow chartreuse green spring cyan azure blue violet magenta rose".split()
)  # one per 30 degrees of hue
_PART_SCALE = 0.3  # marker radius / body minor semi-axis: typically 5-10 % of the body area


def _marker(cls: int, n_classes: int) -> tuple[float, bool]:
    """Class ``cls`` (1-based) -> (hue, has white core). Up to 10 evenly spaced hues,
    then the same hues again as bullseyes, so 20 markers stay mutually distinct."""
    n_hues = min(n_classes, 10)
    return ((cls - 1) % n_hues) / n_hues, cls > n_hues


def class_names(n_classes: int) -> list[str]:
    """Background first, then a name describing each class's marker, e.g. ``red_dot``."""
    names = ["background"]
    for cls in range(1, n_classes + 1):
        hue, core = _marker(cls, n_classes)
        names.append(f"{_HUE_NAMES[round(hue * 12) % 12]}_{'ring' if core else 'dot'}")
    return names


@dataclass
class Sample:
    """One rendered image with the ground truth the generator knows (tests inspect it)."""

    image: np.ndarray  # (S, S, 3) uint8, before JPEG
    mask: np.ndarray  # (S, S) uint8 as written: 0 background, class ids, 255 borders
    labels: tuple[int, ...]  # sorted class ids present in ``mask``
    objects: np.ndarray  # (S, S) int16: 1..k visible object instance, 0 elsewhere (no borders)
    object_classes: tuple[int, ...]  # class id of instance 1..k
    part: np.ndarray  # (S, S) bool: visible marker pixels
    distractor: np.ndarray  # (S, S) bool: visible distractor pixels


@dataclass
class _Shape:
    """One body, drawn in its bounding ``box`` only (most of the frame is far from it)."""

    box: tuple[slice, slice]
    alpha: np.ndarray  # soft body coverage in the box (~1 px anti-aliased edge)
    cls: int = 0  # 0 = distractor
    part_alpha: np.ndarray | None = None
    part_area: float = 0.0  # area of the whole marker disc, even where cut off by the frame
    core: np.ndarray | None = None  # bool: white bullseye centre

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= 0.5

    @property
    def part(self) -> np.ndarray:
        return (self.part_alpha >= 0.5) & self.mask


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """HSV -> RGB as a (3, 1, 1) float32 array in 0..255 (images are built channel-first:
    numpy is several times faster on long per-channel rows than on trailing size-3 axes)."""
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32)[:, None, None] * 255


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A random unsaturated colour: the family shared by bodies, distractors and background."""
    return _rgb(rng.uniform(), rng.uniform(0.05, 0.45), rng.uniform(0.25, 0.85))


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of a size x size image."""
    return tuple(np.mgrid[0:size, 0:size].astype(np.float32) + 0.5)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid resized bicubically."""
    grid = Image.fromarray(rng.normal(0, 0.5, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((shape[1], shape[0]), Image.BICUBIC))


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """Relative brightness modulation: a gradient, mottling or stripes, chosen at random."""
    angle = rng.uniform(0, 2 * np.pi)
    along = (xx * math.cos(angle) + yy * math.sin(angle)) / size
    kind = rng.integers(3)
    if kind == 0:
        return (along - along.mean()) * rng.uniform(0.2, 0.6)
    if kind == 1:
        return _smooth_noise(rng, yy.shape, int(rng.integers(4, 12))) * rng.uniform(0.1, 0.25)
    return np.sin(2 * np.pi * along / rng.uniform(0.04, 0.1)) * rng.uniform(0.06, 0.15)


def _body(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, diameter: float) -> tuple:
    """A rounded blob (superellipse with low-order wobble) of major ``diameter`` px.

    Returns (shape, centre, rotation, semi-axes) so a part can be placed on it.
    """
    size = yy.shape[0]
    a = diameter / 2
    b = a * rng.uniform(0.55, 1.0)
    cy, cx = rng.uniform(0.1, 0.9, 2) * size
    reach = 1.4 * a + 2  # superellipse corner (<= 1.16 a) times the largest wobble (1.15)
    box = tuple(slice(max(0, int(c - reach)), min(size, int(c + reach) + 1)) for c in (cy, cx))
    yy, xx = yy[box], xx[box]
    phi = rng.uniform(0, np.pi)
    cos, sin = math.cos(phi), math.sin(phi)
    u = ((xx - cx) * cos + (yy - cy) * sin) / a
    v = ((yy - cy) * cos - (xx - cx) * sin) / b
    p = rng.uniform(2.0, 3.5)  # 2 = ellipse, larger = squarer; always contains the ellipse
    rho = (np.abs(u) ** p + np.abs(v) ** p) ** (1 / p)
    theta = np.arctan2(v, u)
    edge = 1.0
    for k, amp, ph in zip((2, 3, 4), rng.uniform(0, 0.05, 3), rng.uniform(0, 2 * np.pi, 3)):
        edge = edge + amp * np.cos(k * theta + ph)
    alpha = np.clip((edge - rho) * b + 0.5, 0, 1)
    return _Shape(box, alpha), (cy, cx), (cos, sin), (a, b)


def _object(rng, yy, xx, diameter: float, cls: int, n_classes: int) -> _Shape:
    """A body with its class marker at a random place between centre and rim."""
    shape, (cy, cx), (cos, sin), (a, b) = _body(rng, yy, xx, diameter)
    psi, t = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.55)
    du, dv = t * a * math.cos(psi), t * b * math.sin(psi)
    py, px = cy + du * sin + dv * cos, cx + du * cos - dv * sin
    radius = max(_PART_SCALE * b * rng.uniform(0.9, 1.15), 1.2)
    dist = np.hypot(yy[shape.box] - py, xx[shape.box] - px)
    shape.cls, shape.part_alpha, shape.part_area = cls, np.clip(radius - dist + 0.5, 0, 1), math.pi * radius**2
    if _marker(cls, n_classes)[1]:
        shape.core = dist < 0.45 * radius
    return shape


def _pick_classes(rng: np.random.Generator, n_objects: int, n_classes: int) -> list[int]:
    """Classes of the objects: usually 1-3 distinct, with odd/even pairs (1, 2), (3, 4), ...
    co-occurring far more often than others, as person+bicycle do in VOC."""
    n_distinct = min(n_objects, n_classes, int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])))
    chosen = [int(rng.integers(1, n_classes + 1))]
    partner = chosen[0] + 1 if chosen[0] % 2 else chosen[0] - 1
    while len(chosen) < n_distinct:
        if partner <= n_classes and partner not in chosen and rng.uniform() < 0.7:
            chosen.append(partner)
        else:
            chosen.append(int(rng.choice([c for c in range(1, n_classes + 1) if c not in chosen])))
    return chosen + [int(rng.choice(chosen)) for _ in range(n_objects - n_distinct)]


def _resolve(shapes: list[_Shape], size: int, min_pixels: int) -> tuple[list[_Shape], np.ndarray, np.ndarray]:
    """Drop objects an image label could not honestly name: marker less than half visible
    (occluded or out of frame) or fewer than ``min_pixels`` left once borders are void.
    Dropped objects are not drawn at all, so image, mask and labels agree. Repeats until
    stable because a drop uncovers what lay beneath."""
    while True:
        layer = np.zeros((size, size), np.int16)  # painter's algorithm: index of the top shape
        for i, shape in enumerate(shapes, 1):
            layer[shape.box][shape.mask] = i
        is_object = np.array([0] + [s.cls for s in shapes]) > 0
        border = find_boundaries(np.where(is_object[layer], layer, 0), mode="thick")
        keep = [
            s
            for i, s in enumerate(shapes, 1)
            if not s.cls
            or (
                (s.part & (layer[s.box] == i)).sum() >= 0.5 * s.part_area
                and ((layer[s.box] == i) & ~border[s.box]).sum() >= min_pixels
            )
        ]
        if len(keep) == len(shapes):
            return shapes, layer, border
        shapes = keep


def _layout(rng: np.random.Generator, size: int, n_classes: int, max_objects: int) -> tuple:
    """Objects and distractors in random depth order, resolved (see :func:`_resolve`)."""
    yy, xx = _grid(size)
    for _ in range(1000):  # retry the rare layout where every object got dropped
        n_obj = int(rng.integers(1, max_objects + 1))
        big = 0.5 if n_obj <= 2 else 0.4  # crowded images get smaller objects
        shapes = [
            _object(rng, yy, xx, size * rng.uniform(0.18, big), c, n_classes)
            for c in _pick_classes(rng, n_obj, n_classes)
        ]
        n_distractors = int(rng.choice(4, p=[0.15, 0.35, 0.3, 0.2]))
        shapes += [_body(rng, yy, xx, size * rng.uniform(0.15, 0.45))[0] for _ in range(n_distractors)]
        shapes, layer, border = _resolve(
            [shapes[i] for i in rng.permutation(len(shapes))], size, min_pixels=max(4, size * size // 1000)
        )
        if any(s.cls for s in shapes):
            return shapes, layer, border
    raise RuntimeError("no layout kept an object")


def _paint(rng: np.random.Generator, shapes: list[_Shape], size: int, n_classes: int) -> np.ndarray:
    """Background (two-colour gradient, texture, colour clouds), then the shapes back to front."""
    yy, xx = _grid(size)
    t = np.clip(((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / size + 1) / 2, 0, 1)
    canvas = _muted(rng) * (1 - t) + _muted(rng) * t  # (3, S, S)
    canvas *= 1 + _texture(rng, yy, xx, size)
    canvas += np.stack([_smooth_noise(rng, (size, size), 5) for _ in range(3)]) * 25
    for shape in shapes:
        box, alpha = (slice(None), *shape.box), shape.alpha
        body = _muted(rng) * (1 + _texture(rng, yy[shape.box], xx[shape.box], size))
        canvas[box] = canvas[box] * (1 - alpha) + body * alpha
        if shape.cls:
            part = _rgb(_marker(shape.cls, n_classes)[0], 1.0, rng.uniform(0.85, 1.0))
            if shape.core is not None:
                part = np.where(shape.core, np.float32(255), part)
            alpha = shape.part_alpha * shape.mask
            canvas[box] = canvas[box] * (1 - alpha) + part * alpha
    canvas += rng.random(canvas.shape, np.float32) * 10 - 4.5  # sensor noise, +0.5 to round
    return np.clip(canvas.transpose(1, 2, 0), 0, 255).astype(np.uint8)


def render(seed: int, index: int, image_size: int, n_classes: int, max_objects: int) -> Sample:
    """Draw image ``index`` from its own random stream, SeedSequence(seed, spawn_key=(0, index))."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))
    shapes, layer, border = _layout(rng, image_size, n_classes, max_objects)
    image = _paint(rng, shapes, image_size, n_classes)
    classes = np.array([0] + [s.cls for s in shapes], np.uint8)
    mask = classes[layer]
    mask[border] = IGNORE_INDEX
    present = np.bincount(mask.ravel(), minlength=256)[1:IGNORE_INDEX]
    objects = [i for i, s in enumerate(shapes, 1) if s.cls]
    part = np.zeros(mask.shape, bool)
    for i in objects:
        box = shapes[i - 1].box
        part[box] |= shapes[i - 1].part & (layer[box] == i)
    renumber = np.zeros(len(shapes) + 1, np.int16)
    renumber[objects] = np.arange(1, len(objects) + 1)
    return Sample(
        image=image,
        mask=mask,
        labels=tuple(int(c) + 1 for c in np.flatnonzero(present)),
        objects=renumber[layer],
        object_classes=tuple(shapes[i - 1].cls for i in objects),
        part=part,
        distractor=(layer > 0) & (classes[layer] == 0),
    )


def _write_one(job: tuple) -> tuple[int, ...]:
    """Render one image into the temporary tree; return its labels (runs in a worker)."""
    tree, image_id, seed, index, image_size, n_classes, max_objects = job
    sample = render(seed, index, image_size, n_classes, max_objects)
    Image.fromarray(sample.image).save(Path(tree, "JPEGImages", f"{image_id}.jpg"), quality=95, subsampling=0)
    save_label_png(Path(tree, "SegmentationClass", f"{image_id}.png"), sample.mask, _PALETTE)
    return sample.labels


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def generate(
    root, *, n_images=1000, image_size=128, n_classes=6, seed=0, val_fraction=0.2, max_objects=4, workers=1
) -> dict:
    """Write the demo dataset to ``root`` (replaced atomically); return a summary.

    ``n_classes`` counts foreground classes. ``workers > 1`` renders in a process
    pool; the files are identical to ``workers=1``.
    """
    _check_int("n_images", n_images, 2, 999_999)
    _check_int("image_size", image_size, 32, 1024)
    _check_int("n_classes", n_classes, 1, MAX_CLASSES)
    _check_int("seed", seed, 0, 2**63 - 1)
    _check_int("max_objects", max_objects, 1, 10)
    _check_int("workers", workers, 1, 256)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    n_val = min(max(1, round(n_images * val_fraction)), n_images - 1)

    start = time.perf_counter()
    ids = [f"demo_{i:06d}" for i in range(n_images)]
    split_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    is_val = np.zeros(n_images, bool)
    is_val[split_rng.permutation(n_images)[:n_val]] = True
    names = class_names(n_classes)
    with atomic_dir(root) as tree:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tree / sub).mkdir(parents=True)
        jobs = [(str(tree), ids[i], seed, i, image_size, n_classes, max_objects) for i in range(n_images)]
        if workers == 1:
            labels = [_write_one(job) for job in jobs]
        else:
            with ProcessPoolExecutor(workers) as pool:
                labels = list(pool.map(_write_one, jobs, chunksize=max(1, n_images // (8 * workers))))
        train = [i for i, v in zip(ids, is_val) if not v]
        splits = {"train": train, "train_aug": train, "val": [i for i, v in zip(ids, is_val) if v]}
        for split, split_ids in splits.items():
            (tree / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        (tree / "classes.txt").write_text("".join(f"{n}\n" for n in names))
        entries = ",\n".join(f"  {json.dumps(i)}: {json.dumps(list(lab))}" for i, lab in zip(ids, labels))
        (tree / "cls_labels.json").write_text(f"{{\n{entries}\n}}\n")  # one image per line

    counts = Counter(c for image_labels in labels for c in image_labels)
    return {
        "root": str(root),
        "splits": {split: len(split_ids) for split, split_ids in splits.items()},
        "class_images": {names[c]: counts[c] for c in range(1, n_classes + 1)},
        "mean_labels_per_image": sum(map(len, labels)) / n_images,
        "seconds": time.perf_counter() - start,
    }
