"""The one dataset interface: a folder in the PASCAL VOC 2012 layout.

::

    root/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png        palette PNG, pixel = class id, 0 background, 255 void
      ImageSets/Segmentation/<split>.txt one image id per line
      classes.txt        (optional)      one class name per line, background first; default VOC's 21
      cls_labels.json    (optional)      {"<id>": [class ids]}: the image-level labels
      Annotations/<id>.xml (optional)    VOC XML, used for labels when cls_labels.json is absent

Image-level labels come from ``cls_labels.json`` if present, else from the VOC XML
annotations, else from the masks. Every stage reads data through :class:`VOCDataset`.

Text files are UTF-8; a byte order mark at the start (as some Windows editors write) is ignored.
An image id is a plain file name (see :func:`id_problem`): the id becomes part of a path, and an
id such as ``../../other/JPEGImages/x`` would read files outside the dataset root. In
``cls_labels.json`` a class id is a JSON integer; a number with a zero fraction (``3.0``, as
float arrays serialise) counts as that integer, while strings (even ``"3"``), booleans and
other fractions are refused.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
IGNORE_INDEX = 255
KINDS = ("labels", "images", "masks")  # what VOCDataset.validate checks of each image


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map (bit-interleaved class id), flattened RGB."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def id_problem(image_id: str) -> str | None:
    """Why ``image_id`` is not a plain file name, or None if it is one.

    Refused: path separators (``/``, ``\\``), ``.`` and ``..`` and any other leading dot (hidden
    files), and control or format characters (NUL, an invisible mid-file byte order mark, ...).
    An absolute path is caught by its separator.
    """
    if "/" in image_id or "\\" in image_id:
        return "contains a path separator"
    if image_id.startswith("."):
        return "starts with '.'"
    bad = sorted({c for c in image_id if unicodedata.category(c) in ("Cc", "Cf")})
    if bad:
        return "contains non-printing characters " + ", ".join(f"U+{ord(c):04X}" for c in bad)
    return None


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, a leading byte order mark dropped."""
    return path.read_text(encoding="utf-8-sig").splitlines()


def _class_ids(value) -> tuple[list[int], str | None]:
    """The class ids of one ``cls_labels.json`` entry and a description of what is wrong with it."""
    if not isinstance(value, list):
        return [], f"labels must be a list of class ids, got {_json(value)}"
    ids, bad = [], []
    for v in value:
        if isinstance(v, int) and not isinstance(v, bool):
            ids.append(v)
        elif isinstance(v, float) and v.is_integer():
            ids.append(int(v))
        else:
            bad.append(v)
    return ids, (f"label values {_json(bad)} are not integer class ids" if bad else None)


def _json(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class DatasetProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DatasetError(ValueError):
    """A dataset that cannot be used; carries every problem found, each naming its file."""

    def __init__(self, root: Path | str, problems: list[DatasetProblem]):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:200])
        more = len(self.problems) - 200
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"dataset {root}: {len(self.problems)} problem(s)\n{shown}{tail}")


class VOCDataset:
    """Read-only access to a dataset root in the VOC layout (see module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(self.root, [DatasetProblem(str(self.root), "dataset root is not a folder")])
        self.classes = self._read_classes()

    # ----------------------------------------------------------------- layout
    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.classes)

    def split_file(self, split: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def splits(self) -> list[str]:
        folder = self.root / "ImageSets" / "Segmentation"
        return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []

    def ids(self, split: str) -> list[str]:
        """The image ids of ``split``, one per line (the first word of each non-empty line).

        Raises :class:`DatasetError` when the split file is missing or unreadable, or lists
        ids that are not plain file names (each with its line number).
        """
        ids, problems = self._read_split(split)
        if problems:
            raise DatasetError(self.root, problems)
        return ids

    def _read_split(self, split: str) -> tuple[list[str], list[DatasetProblem]]:
        """The usable ids of ``split`` and the problems of the split file."""
        path = self.split_file(split)
        if not path.is_file():
            have = ", ".join(self.splits()) or "none"
            return [], [DatasetProblem(str(path), f"split '{split}' not found (splits: {have})")]
        try:
            lines = read_lines(path)
        except (OSError, UnicodeDecodeError) as err:
            return [], [DatasetProblem(str(path), f"cannot read: {err}")]
        ids, problems = [], []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            image_id = line.split()[0]
            reason = id_problem(image_id)
            if reason:
                problems.append(
                    DatasetProblem(str(path), f"line {number}: id {image_id!r} is not a plain file name " f"({reason})")
                )
            else:
                ids.append(image_id)
        return ids, problems

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def annotation_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def has_mask(self, image_id: str) -> bool:
        return self.mask_path(image_id).is_file()

    # ----------------------------------------------------------------- pixels
    def load_image(self, image_id: str) -> np.ndarray:
        """RGB uint8 array (H, W, 3), writable (so torch.from_numpy can share it)."""
        with Image.open(self.image_path(image_id)) as img:
            return np.array(img.convert("RGB"))

    def load_mask(self, image_id: str) -> np.ndarray:
        """Class-id uint8 array (H, W); 255 = void."""
        with Image.open(self.mask_path(image_id)) as img:
            if img.mode not in ("P", "L"):
                raise ValueError(f"{self.mask_path(image_id)}: mask mode {img.mode}, expected a palette (P) or L PNG")
            return np.asarray(img)

    # ----------------------------------------------------------------- labels
    @property
    def label_source(self) -> str:
        if (self.root / "cls_labels.json").is_file():
            return "cls_labels.json"
        if (self.root / "Annotations").is_dir():
            return "Annotations"
        return "SegmentationClass"

    @cached_property
    def _labels_json(self) -> dict[str, list[int]]:
        path = self.root / "cls_labels.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(self.root, [DatasetProblem(str(path), f"cannot read: {err}")]) from err
        if not isinstance(data, dict):
            raise DatasetError(self.root, [DatasetProblem(str(path), 'expected an object {"image id": [class ids]}')])
        return data

    def labels(self, image_id: str) -> tuple[int, ...]:
        """Sorted foreground class ids (1..num_classes-1) present in the image.

        Raises :class:`DatasetError` naming the label file when the labels cannot be read or
        are not a list of integer class ids.
        """
        source = self.label_source
        if source == "cls_labels.json":
            if image_id not in self._labels_json:
                self._fail(self.root / "cls_labels.json", f"no labels for image '{image_id}'")
            ids, problem = _class_ids(self._labels_json[image_id])
            if problem:
                self._fail(self.root / "cls_labels.json", f"image '{image_id}': {problem}")
            return tuple(sorted(set(ids)))
        if source == "Annotations":
            return self._labels_from_xml(image_id)
        mask = self.load_mask(image_id)
        present = np.unique(mask)
        return tuple(int(c) for c in present if c not in (0, IGNORE_INDEX))

    def _fail(self, path: Path, message: str):
        raise DatasetError(self.root, [DatasetProblem(str(path), message)])

    def _labels_from_xml(self, image_id: str) -> tuple[int, ...]:
        path = self.annotation_path(image_id)
        try:
            objects = ET.parse(path).getroot().iter("object")
            names = [obj.findtext("name", "").strip() for obj in objects]
        except (OSError, ET.ParseError) as err:
            self._fail(path, f"cannot read annotation ({err})")
        unknown = sorted(set(names) - set(self.classes))
        if unknown:
            self._fail(path, f"class name(s) {unknown} not in the class list")
        return tuple(sorted({self.classes.index(n) for n in names} - {0}))

    def label_matrix(self, image_ids: list[str]) -> np.ndarray:
        """Multi-hot (N, num_classes-1) float32 over the foreground classes."""
        out = np.zeros((len(image_ids), self.num_classes - 1), np.float32)
        for row, image_id in enumerate(image_ids):
            for c in self.labels(image_id):
                out[row, c - 1] = 1.0
        return out

    # ----------------------------------------------------------------- checks
    def _read_classes(self) -> tuple[str, ...]:
        path = self.root / "classes.txt"
        if not path.is_file():
            return VOC_CLASSES
        try:
            lines = read_lines(path)
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(self.root, [DatasetProblem(str(path), f"cannot read: {err}")]) from err
        names = tuple(ln.strip() for ln in lines if ln.strip())
        problems = []
        if len(names) < 2:
            problems.append("needs background plus at least one class")
        if len(set(names)) != len(names):
            problems.append("class names must be unique")
        if len(names) > IGNORE_INDEX:
            problems.append(f"at most {IGNORE_INDEX} classes (255 is the void label)")
        if problems:
            raise DatasetError(self.root, [DatasetProblem(str(path), m) for m in problems])
        return names

    def _image_size(self, image_id: str, decode: bool) -> tuple[tuple[int, int] | None, list[DatasetProblem]]:
        """The image's (width, height), decoding every pixel when ``decode`` (else the header only)."""
        img_path = self.image_path(image_id)
        if not img_path.is_file():
            return None, [DatasetProblem(str(img_path), "image file missing")]
        try:
            with Image.open(img_path) as img:
                if decode:
                    img.load()
                return img.size, []
        except Exception as err:  # PIL raises many types for broken files
            return None, [DatasetProblem(str(img_path), f"unreadable image ({err})")]

    def _check_mask(
        self, image_id: str, require_mask: bool, size: tuple[int, int] | None = None
    ) -> tuple[np.ndarray | None, list[DatasetProblem]]:
        """The mask (None when absent or unreadable) and its problems: missing when required, unreadable,
        another size than its image (``size``, else read from the image's header), class ids out of range."""
        mask_path = self.mask_path(image_id)
        if not mask_path.is_file():
            return None, [DatasetProblem(str(mask_path), "mask file missing")] if require_mask else []
        try:
            mask = self.load_mask(image_id)
        except Exception as err:
            return None, [DatasetProblem(str(mask_path), f"unreadable mask ({err})")]
        problems = []
        if size is None:  # a missing or broken image is the images' problem
            size, _ = self._image_size(image_id, decode=False)
        if size is not None and (mask.shape[1], mask.shape[0]) != size:
            problems.append(
                DatasetProblem(
                    str(mask_path), f"mask size {mask.shape[1]}x{mask.shape[0]} != image size {size[0]}x{size[1]}"
                )
            )
        values = np.unique(mask)
        bad = [int(v) for v in values if v >= self.num_classes and v != IGNORE_INDEX]
        if bad:
            problems.append(
                DatasetProblem(str(mask_path), f"class ids {bad} outside 0..{self.num_classes - 1} (and 255)")
            )
        return mask, problems

    def _check_image(self, image_id: str, require_mask: bool, kinds=KINDS) -> list[DatasetProblem]:
        problems, size = [], None
        if "images" in kinds:
            size, image_problems = self._image_size(image_id, decode=True)
            problems += image_problems
        mask = None
        if "masks" in kinds or ("labels" in kinds and self.label_source == "SegmentationClass"):
            mask, mask_problems = self._check_mask(image_id, require_mask and "masks" in kinds, size)
            if "masks" in kinds:
                problems += mask_problems
        if "labels" in kinds:
            problems += self._check_labels(image_id, mask)
        return problems

    def _check_labels(self, image_id: str, mask: np.ndarray | None) -> list[DatasetProblem]:
        source = self.label_source
        if source == "SegmentationClass" and mask is None:
            where = self.mask_path(image_id)
            return [DatasetProblem(str(where), "no mask, no cls_labels.json and no Annotations: no image labels")]
        try:
            labels = self.labels(image_id)
        except DatasetError as err:
            return err.problems
        bad = [c for c in labels if not 1 <= c < self.num_classes]
        if bad:
            where = self.root / source if source != "Annotations" else self.annotation_path(image_id)
            return [
                DatasetProblem(str(where), f"image '{image_id}': label ids {bad} outside 1..{self.num_classes - 1}")
            ]
        return []

    def validate(
        self, splits: list[str], require_masks: bool = True, workers: int = 4, kinds: tuple[str, ...] = KINDS
    ) -> list[DatasetProblem]:
        """Check every image of ``splits``; return all problems found (empty list = valid).

        ``kinds`` picks what is checked of each image: its labels, its image file (decoded), its mask (readable,
        the image's size, class ids in range; required when ``require_masks``). The split lists are always checked.
        """
        problems: list[DatasetProblem] = []
        ids: list[str] = []
        for split in splits:
            split_ids, split_problems = self._read_split(split)
            problems += split_problems
            if split_problems and not split_ids:
                continue
            if not split_ids:
                problems.append(DatasetProblem(str(self.split_file(split)), "split lists no images"))
            dupes = sorted(i for i, n in Counter(split_ids).items() if n > 1)
            if dupes:
                problems.append(DatasetProblem(str(self.split_file(split)), f"duplicate ids {dupes[:10]}"))
            ids += split_ids
        unique_ids = list(dict.fromkeys(ids))
        with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decodes without the GIL
            for found in pool.map(lambda i: self._check_image(i, require_masks, kinds), unique_ids):
                problems += found
        return problems

    def check(self, splits: list[str], require_masks: bool = True, workers: int = 4) -> None:
        """Like :meth:`validate` but raise :class:`DatasetError` listing every problem."""
        problems = self.validate(splits, require_masks=require_masks, workers=workers)
        if problems:
            raise DatasetError(self.root, problems)
