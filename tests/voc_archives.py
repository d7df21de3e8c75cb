"""Test helpers: miniature VOC 2012 / SBD archives and a local HTTP server with faults.

The fake archives have the real folder layouts and file formats (JPEG, palette PNG
with 255 borders, VOC XML, MATLAB struct ``GTcls``) but a dozen tiny images, with
split overlaps chosen so every rule of the train_aug set algebra is exercised.
The server speaks HTTP Range and can drop connections, ignore Range, or serve a
corrupted copy, and records every request so tests can check what the client sent.
"""

from __future__ import annotations

import io
import re
import tarfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from wsss_core.data.voc_layout import VOC_CLASSES, voc_palette

# id -> object class names in its XML. Each id's split membership is in the comment.
OBJECTS = {
    "2007_000032": ["aeroplane", "person"],  # VOC train, SBD train (both masks: VOC's wins)
    "2007_000039": ["tvmonitor"],  # VOC train, SBD val (both masks: VOC's wins)
    "2007_000063": ["dog", "chair"],  # VOC train only
    "2007_000121": ["bird"],  # VOC train only
    "2008_000002": ["cat"],  # VOC val, SBD train -> excluded from train_aug
    "2008_000003": ["horse", "person"],  # VOC val, SBD val   -> excluded from train_aug
    "2008_000007": ["car"],  # VOC val only
    "2009_000001": ["cow"],  # SBD train only
    "2009_000002": ["dog", "person"],  # SBD train only; "person" is in the XML, not the mask
    "2009_000003": ["boat"],  # SBD val only
    "2010_000001": ["sofa"],  # in JPEGImages but in no split -> not in the dataset
}
VOC_TRAIN = ["2007_000032", "2007_000039", "2007_000063", "2007_000121"]
VOC_VAL = ["2008_000002", "2008_000003", "2008_000007"]
SBD_TRAIN = ["2007_000032", "2008_000002", "2009_000001", "2009_000002"]
SBD_VAL = ["2007_000039", "2008_000003", "2009_000003"]
EXPECTED_TRAIN_AUG = [
    "2007_000032",
    "2007_000039",
    "2007_000063",
    "2007_000121",
    "2009_000001",
    "2009_000002",
    "2009_000003",
]
SBD_ONLY_MASK_CLASSES = {"2009_000002": ["dog"]}  # mask classes differing from the XML


def image_size(index: int) -> tuple[int, int]:
    """(height, width), never square, so a transposed mask is caught."""
    return 20 + 2 * index, 28 + 3 * index


def voc_mask(classes: list[str], hw: tuple[int, int]) -> np.ndarray:
    """One rectangle per class on background, each ringed with VOC's 255 void border."""
    mask = np.zeros(hw, np.uint8)
    for k, name in enumerate(classes):
        top, left = 2 + 3 * k, 2 + 4 * k
        mask[top : top + 8, left : left + 10] = 255
        mask[top + 1 : top + 7, left + 1 : left + 9] = VOC_CLASSES.index(name)
    return mask


def sbd_mask(classes: list[str], hw: tuple[int, int]) -> np.ndarray:
    """SBD has no void label, and (in these fakes) differs from VOC's mask on purpose."""
    mask = np.zeros(hw, np.uint8)
    for k, name in enumerate(classes):
        mask[1 + 2 * k : 12, 3 + 3 * k : 15] = VOC_CLASSES.index(name)
    return mask


def _xml(image_id: str, names: list[str], hw: tuple[int, int]) -> str:
    objects = "".join(
        f"<object><name>{n}</name><difficult>{k % 2}</difficult>"
        f"<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
        + ("<part><name>head</name></part>" if n == "person" else "")
        + "</object>"
        for k, n in enumerate(names)
    )
    return (
        f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{hw[1]}</width><height>{hw[0]}</height><depth>3</depth></size>{objects}</annotation>"
    )


def _tar_dir(src: Path, archive: Path, arcname: str) -> Path:
    mode = "w:gz" if archive.name.endswith((".tgz", ".tar.gz")) else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(src / arcname, arcname=arcname)
    return archive


def write_voc_tree(root: Path) -> Path:
    """``root/VOCdevkit/VOC2012`` with images, masks (VOC train+val), XML and split files."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, (image_id, names) in enumerate(OBJECTS.items()):
        hw = image_size(index)
        pixels = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, names, hw))
        if image_id in VOC_TRAIN + VOC_VAL:
            png = Image.fromarray(voc_mask(names, hw), mode="P")
            png.putpalette(voc_palette())
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
    splits = {"train": VOC_TRAIN, "val": VOC_VAL, "trainval": sorted(VOC_TRAIN + VOC_VAL)}
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (voc / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in OBJECTS))
    return voc


def write_sbd_tree(root: Path) -> Path:
    """``root/benchmark_RELEASE/dataset`` with img/, cls/*.mat (struct GTcls), inst/, train/val.txt."""
    ds = root / "benchmark_RELEASE" / "dataset"
    for sub in ("img", "cls", "inst"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    order = list(OBJECTS)
    for image_id in SBD_TRAIN + SBD_VAL:
        hw = image_size(order.index(image_id))
        names = SBD_ONLY_MASK_CLASSES.get(image_id, OBJECTS[image_id])
        seg = sbd_mask(names, hw)
        boundaries = np.empty(len(VOC_CLASSES) - 1, dtype=object)
        for c in range(len(boundaries)):
            boundaries[c] = np.zeros(hw, np.uint8)
        present = np.array(sorted({VOC_CLASSES.index(n) for n in names}), np.uint8)
        gt = {"Segmentation": seg, "Boundaries": boundaries, "CategoriesPresent": present}
        scipy.io.savemat(ds / "cls" / f"{image_id}.mat", {"GTcls": gt})
        Image.fromarray(np.full((*hw, 3), 128, np.uint8)).save(ds / "img" / f"{image_id}.jpg")
    (ds / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (ds / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    return ds


def build_archives(folder: Path) -> tuple[Path, Path]:
    """Write ``VOCtrainval_11-May-2012.tar`` and ``benchmark.tgz`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_voc_tree(folder / "voc_src")
    write_sbd_tree(folder / "sbd_src")
    voc = _tar_dir(folder / "voc_src", folder / "VOCtrainval_11-May-2012.tar", "VOCdevkit")
    sbd = _tar_dir(folder / "sbd_src", folder / "benchmark.tgz", "benchmark_RELEASE")
    return voc, sbd


def tar_with(archive: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar built from hand-made headers: for archives no honest tool would write."""
    with tarfile.open(archive, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


@dataclass
class Request:
    path: str
    range: str | None


class FaultyServer:
    """``http.server`` on 127.0.0.1 serving ``files`` (URL path -> bytes), with switches.

    ``drop_after``/``drop_requests``: the first ``drop_requests`` responses stop after
    ``drop_after`` body bytes and close the connection. ``ignore_range``: answer 200
    with the whole file. ``corrupt``: flip one byte in the middle of every body.
    ``wrong_range``: answer a Range request with 206 but the bytes from offset 0.
    ``trickle = (n, pause_s)``: send the body ``n`` bytes at a time, pausing ``pause_s`` between
    pieces (no read ever waits long enough to time out). ``no_length``: send no Content-Length
    (the body ends when the connection closes, so a drop looks like the end of the file).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[Request] = []
        self.drop_after: int | None = None
        self.drop_requests = 0
        self.ignore_range = False
        self.corrupt = False
        self.wrong_range = False
        self.trickle: tuple[int, float] | None = None
        self.no_length = False
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append(Request(self.path, self.headers.get("Range")))
                    drop = server.drop_after if server.drop_requests > 0 else None
                    server.drop_requests -= 1
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                if server.corrupt:
                    mid = len(data) // 2
                    data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match.group(1)) if match and not server.ignore_range else 0
                if start >= len(data) and match and not server.ignore_range:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                partial = bool(start)
                start = 0 if server.wrong_range else start
                body = data[start:]
                self.send_response(206 if partial else 200)
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if not server.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                body = body if drop is None else body[:drop]
                if server.trickle is None:
                    self.wfile.write(body)
                    self.wfile.flush()
                    return
                n, pause_s = server.trickle
                try:
                    for start in range(0, len(body), n):
                        self.wfile.write(body[start : start + n])
                        self.wfile.flush()
                        time.sleep(pause_s)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    pass

        return Handler
