"""Stage 3 for the co-attention classifier: single-round and multi-round co-attentive CAMs.

Single-round maps are the plain CAMs (class conv phi) of the co-attention classifier, exactly
as :func:`wsss_core.cams.infer.infer_cams` computes them. Multi-round maps follow the
reference implementation of Sun et al.: for image n, the co-attention CAMs (``co_classifier``
on co-attended features) of

* self-pairs: n with each of its other views (mirror image, other scales), each view's map
  brought back to n's frame, and n's own map in the pair with its mirror image;
* reference pairs: for each labelled class k, R images of the split that also contain k
  (seeded choice); the maps of n for class k are averaged over the R references.

Each of these maps is ReLU'd and divided by its maximum; their mean is the multi-round CAM. As in the
reference code, a map whose mean raw score m has sigmoid(m) <= 0.1 (the pair barely sees the class) adds
nothing but still counts in the mean; n's own map in the pair with its mirror image is always added.

Cost: the backbone runs once per view of each image, as in single-round inference, plus once
per image for a scale-1 feature cache (a temporary HDF5 file beside the output, fp16) from
which every reference pair is served: a reference pair costs an N_n x N_r affinity product
and no backbone pass. :func:`coattentive_cams` writes the single-round store from the same
pass, so the extra cost of multi-round inference is the cache pass plus the pair products.
"""

from __future__ import annotations

import logging
import math
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss_core.cams.infer import (
    _Images,
    load_for_dataset,
    merge_views,
    normalize_cams,
    prepare,
    scaled_views,
    size_batches,
    unit_max,
)
from wsss_core.cams.store import CAMWriter
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.devices import select_device
from wsss_core.fileio import file_sha256
from wsss_core.models.coattention import TARGET, CoAttentionNet, domain_pair

log = logging.getLogger(__name__)
SELF = domain_pair(TARGET, TARGET)


def choose_references(label_matrix: np.ndarray, index: int, class_id: int, count: int, seed: int) -> list[int]:
    """Up to ``count`` distinct images (row indices) other than ``index`` that contain ``class_id``;
    the choice depends on (seed, index, class) only."""
    candidates = np.flatnonzero(label_matrix[:, class_id - 1] > 0)
    candidates = candidates[candidates != index]
    rng = np.random.default_rng([seed, index, class_id])
    return sorted(int(i) for i in rng.choice(candidates, size=min(count, len(candidates)), replace=False))


class FeatureCache:
    """Scale-1 backbone features of every image, fp16, in a temporary HDF5 file (deleted on close)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(path, "w")  # a leftover of a killed run is overwritten

    def put(self, index: int, features: torch.Tensor) -> None:
        self.file.create_dataset(str(index), data=features.to(torch.float16).cpu().numpy())

    def get(self, index: int, device) -> torch.Tensor:
        """(1, C, h, w) float32 features of image ``index``."""
        return torch.from_numpy(self.file[str(index)][()]).to(device=device, dtype=torch.float32)[None]

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


@torch.no_grad()
def self_pair_maps(model: CoAttentionNet, x: torch.Tensor, scales, flip: bool):
    """For a normalised batch ``x``: (single-round CAMs (B, K, H, W) summed over views, list of
    self-pair co-attention CAMs each (B, K, H, W) in n's frame, n's scale-1 features)."""
    size, b = x.shape[-2:], len(x)
    single, views = 0, []
    for scale in scales:
        feats = model.features(scaled_views(x, scale, flip))
        single = single + merge_views(model.classifier(feats), flip, size)
        views.append((scale, feats))
    f_1 = next(f for s, f in views if s == 1)[:b]
    maps = []
    for scale, feats in views:
        for i, f_view in enumerate(feats.split(b)):  # i = 1: the mirrored copy
            if scale == 1 and i == 0:
                continue
            co = model.co_cams(f_view, f_1, SELF)
            maps.append(
                F.interpolate((co.flip(-1) if i else co).float(), size=size, mode="bilinear", align_corners=False)
            )
    if flip:  # n's own map in the pair with its mirror image, first: it is always kept (see kept())
        f_mirror = next(f for s, f in views if s == 1)[b:]
        maps.insert(
            0,
            F.interpolate(model.co_cams(f_1, f_mirror, SELF).float(), size=size, mode="bilinear", align_corners=False),
        )
    return single, maps, f_1


# sigmoid(-2.197) = 0.1: a co-attention map whose mean score is below this is left out of the fusion
MIN_MEAN_LOGIT = math.log(0.1 / 0.9)


def kept(maps: torch.Tensor) -> torch.Tensor:
    """(..., 1, 1) 1.0 where a raw (..., H, W) map's mean score is above :data:`MIN_MEAN_LOGIT`, else 0.0."""
    return (maps.mean(dim=(-2, -1)) > MIN_MEAN_LOGIT).to(maps.dtype)[..., None, None]


@torch.no_grad()
def reference_map(
    model: CoAttentionNet, f_n: torch.Tensor, query: torch.Tensor, references: list[torch.Tensor], class_id: int
):
    """(h, w) co-attention CAM of class ``class_id`` for features ``f_n`` (1, C, h, w) with their
    :meth:`CoAttentionNet.query` ``query``, averaged over reference features (each (1, C, h_r, w_r));
    references of one size are batched."""
    total = 0
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for f_r in references:
        by_shape.setdefault(tuple(f_r.shape), []).append(f_r)
    for group in by_shape.values():
        f_r = torch.cat(group)
        cams = model.co_cams(f_n.expand(len(f_r), -1, -1, -1), f_r, SELF, query=query.expand(len(f_r), -1, -1))
        total = total + cams[:, class_id - 1].sum(0)
    return total / len(references)


def coattentive_cams(
    dataset_root,
    split: str,
    model_path,
    out_single_h5,
    out_multi_h5,
    *,
    scales,
    flip: bool = True,
    references: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    num_workers: int = 0,
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """Write the single-round and multi-round CAMs of every image of ``split`` (two CAM stores)."""
    device = select_device(device)
    torch.set_num_threads(max(1, threads))
    ds = VOCDataset(dataset_root)
    model, meta = load_for_dataset(model_path, ds, device)
    if not isinstance(model, CoAttentionNet):
        raise ValueError(f"{model_path}: a '{meta['arch']['method']}' classifier has no co-attention heads")
    if 1 not in [float(s) for s in scales]:
        raise ValueError(f"config key cams.scales: co-attentive CAMs need scale 1.0 among {list(scales)}")
    scales = sorted(scales, key=lambda s: s != 1)  # scale 1 first: its features serve the other views
    ids = ds.ids(split)
    labels = ds.label_matrix(ids)
    batches = size_batches(ds, ids, batch_size)
    loader_kw = dict(batch_sampler=batches, num_workers=num_workers)
    attrs = {"split": split, "flip": flip, "model_file": str(model_path)}
    sha = file_sha256(model_path)
    pairs = 0
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(torch.backends.cudnn.flags(enabled=False))  # many shapes: see infer_cams
        out = Path(out_multi_h5)
        cache = FeatureCache(out.parent / f".{out.stem}.features.tmp.h5")
        stack.callback(cache.close)
        # pass 1: scale-1 features of every image, the references' side of every pair
        for images, indices in tqdm(
            DataLoader(_Images(ds, ids), **loader_kw), desc="features", mininterval=10, ascii=True
        ):
            feats = model.features(prepare(images.to(device), meta["mean"], meta["std"]))
            for f, index in zip(feats, indices.tolist()):
                cache.put(index, f)
        writers = [
            stack.enter_context(
                CAMWriter(
                    path,
                    classes=list(ds.classes),
                    scales=list(scales),
                    stride=meta["stride"],
                    checkpoint_sha256=sha,
                    extra_attrs={**attrs, "rounds": rounds},
                )
            )
            for path, rounds in ((out_single_h5, "single"), (out_multi_h5, "multi"))
        ]
        # pass 2: every view of each image, its self-pairs and its reference pairs
        for images, indices in tqdm(
            DataLoader(_Images(ds, ids), **loader_kw), desc="co-attentive CAMs", mininterval=10, ascii=True
        ):
            x = prepare(images.to(device), meta["mean"], meta["std"])
            single, self_maps, f_1 = self_pair_maps(model, x, scales, flip)
            for row, index in enumerate(indices.tolist()):
                class_ids = ds.labels(ids[index])
                writers[0].write(ids[index], normalize_cams(single[row].cpu(), class_ids).numpy(), class_ids)
                rows = [c - 1 for c in class_ids]
                maps = [
                    unit_max(m[row, rows]) * (1.0 if flip and i == 0 else kept(m[row, rows]))
                    for i, m in enumerate(self_maps)
                ]
                counts = torch.full((len(rows), 1, 1), float(len(maps)), device=x.device)
                total = sum(maps) if maps else torch.zeros(len(rows), *x.shape[-2:], device=x.device)
                f_n = f_1[row : row + 1]
                query = model.query(f_n, SELF)  # once for all of the image's reference pairs
                for j, class_id in enumerate(class_ids):
                    chosen = choose_references(labels, index, class_id, references, seed)
                    if not chosen:
                        continue
                    ref = reference_map(model, f_n, query, [cache.get(r, device) for r in chosen], class_id)
                    ref = F.interpolate(ref[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                    total[j] += unit_max(ref[0, 0]) * kept(ref[0, 0])
                    counts[j] += 1
                    pairs += len(chosen)
                multi = unit_max(total / counts.clamp_min(1)).cpu()  # rows = the image's classes already
                writers[1].write(ids[index], multi.numpy(), class_ids)
    log.info("wrote single- and multi-round CAMs of %d images (%d reference pairs)", len(ids), pairs)
    return {"images": len(ids), "batches": len(batches), "reference_pairs": pairs}
