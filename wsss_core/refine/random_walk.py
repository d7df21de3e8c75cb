"""PSA's pixel pairs, affinity loss and random walk (Ahn & Kwak, CVPR 2018), on a feature-stride grid.

AffinityNet embeds every cell of a stride-``s`` grid; the affinity of two cells is
``a_ij = exp(-mean_c |f_i - f_j|)`` (1 on the diagonal, symmetric, in (0, 1]). Only pairs
closer than ``radius`` cells are used: distant pairs teach little and would make the
transition matrix dense.

Pairs: every unordered pair once, as a displacement ``(dy, dx)`` from the half-plane
``dy > 0 or (dy == 0 and dx > 0)`` with ``0 < dy^2 + dx^2 < radius^2`` (PSA's
``get_indices_of_pairs`` order), applied at every cell where both ends lie inside the
grid. PSA instead crops a border of ``radius - 1`` cells off the "from" side so every
displacement has the same count; that drops the pairs between two border cells, which
the random walk needs at the image edge, so here all in-bounds pairs are kept.

Random walk: ``A = a^beta`` on the pairs (both directions) plus 1 on the diagonal,
``T = D^-1 A`` (row-stochastic), and the class scores ``x`` (cells x classes) become
``T^t x`` with ``t = 2^logt``: each step replaces a cell's scores by the affinity-weighted
mean of its neighbours', so scores spread within regions and stop at boundaries. This is
PSA's ``cam_vec @ trans_mat^t`` with its column-normalised ``trans_mat = A D^-1 = T'``.
The sparse version multiplies ``t`` times by a matrix with ~``pi radius^2`` entries a row;
squaring it would fill it in, so the dense (cells^2) version is kept only as the reference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from wsss_core.cams.infer import unit_max
from wsss_core.data.voc_layout import IGNORE_INDEX

# Added inside the logs of the loss, as PSA does: an affinity can underflow to exactly 0 or 1 in fp32.
LOG_EPS = 1e-5


def displacements(radius: int) -> list[tuple[int, int]]:
    """The half-plane displacements ``(dy, dx)`` with ``0 < dy^2 + dx^2 < radius^2``, in PSA's order."""
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 2:
        raise ValueError(f"affinity radius must be an integer >= 2 (cells), got {radius!r}")
    out = [(0, dx) for dx in range(1, radius)]
    out += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius**2]
    return out


def _windows(height: int, width: int, radius: int) -> Iterator[tuple[slice, slice, slice, slice]]:
    """Per displacement, (from rows, from cols, to rows, to cols) slices of the cells whose pair is in bounds.

    Both :func:`pair_indices` and :func:`pair_affinities` walk these, so their pair orders agree.
    """
    for dy, dx in displacements(radius):
        x0, x1 = max(0, -dx), min(width, width - dx)
        if dy >= height or x1 <= x0:
            continue
        yield slice(0, height - dy), slice(x0, x1), slice(dy, height), slice(x0 + dx, x1 + dx)


def pair_indices(height: int, width: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(from, to) int64 raster indices of every in-bounds pair of an ``height x width`` grid, each pair once."""
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    frm, to = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for fy, fx, ty, tx in _windows(height, width, radius):
        frm.append(grid[fy, fx].ravel())
        to.append(grid[ty, tx].ravel())
    return torch.from_numpy(np.concatenate(frm)), torch.from_numpy(np.concatenate(to))


def pair_affinities(embedding: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, P) affinities ``exp(-mean_c |f_i - f_j|)`` of the pairs of :func:`pair_indices`, in its order.

    Computed one displacement at a time on shifted views rather than by gathering both ends of
    every pair: a gather of a 448-channel embedding over the ~100k pairs of a VOC image is 0.5 GB.
    """
    if embedding.ndim != 4:
        raise ValueError(f"embedding must be (B, C, H, W), got {tuple(embedding.shape)}")
    f = embedding.float()  # affinities near 1 need fp32 even under autocast
    parts = [f.new_zeros((f.shape[0], 0))]
    for fy, fx, ty, tx in _windows(f.shape[2], f.shape[3], radius):
        diff = f[:, :, fy, fx] - f[:, :, ty, tx]
        parts.append(torch.exp(-diff.abs().mean(1)).flatten(1))
    return torch.cat(parts, dim=1)


def grid_labels(labels: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, H, W) pixel labels -> (B, ceil(H / stride), ceil(W / stride)): the label at each cell's centre pixel
    (for H, W multiples of ``stride``, as training crops and padded images are)."""
    return labels[:, stride // 2 :: stride, stride // 2 :: stride]


def pair_labels(labels: torch.Tensor, ind_from: torch.Tensor, ind_to: torch.Tensor):
    """(bg_pos, fg_pos, neg) bool (B, P) from (B, H, W) grid labels: both background, same foreground
    class, different labels. Pairs with a void (255) end are in none of the three."""
    flat = labels.flatten(1)
    lf, lt = flat[:, ind_from], flat[:, ind_to]
    valid = (lf != IGNORE_INDEX) & (lt != IGNORE_INDEX)
    same = valid & (lf == lt)
    return same & (lf == 0), same & (lf != 0), valid & (lf != lt)


def affinity_loss(aff: torch.Tensor, labels: torch.Tensor, ind_from: torch.Tensor, ind_to: torch.Tensor) -> dict:
    """PSA's loss ``bg_pos/4 + fg_pos/4 + neg/2`` on (B, P) affinities and (B, H, W) grid labels.

    Positives cost ``-log(a + eps)``, negatives ``-log(1 + eps - a)``; each term is the mean over
    its pairs in the whole batch (so images with many pairs of a kind weigh more, as in PSA), and
    0 with zero gradient when the batch has none. Returns the total and the three terms.
    """
    bg, fg, neg = pair_labels(labels, ind_from, ind_to)
    pos_cost, neg_cost = -torch.log(aff + LOG_EPS), -torch.log(1.0 + LOG_EPS - aff)

    def mean_over(cost: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (cost * mask).sum() / mask.sum().clamp_min(1)

    terms = {"bg_pos": mean_over(pos_cost, bg), "fg_pos": mean_over(pos_cost, fg), "neg": mean_over(neg_cost, neg)}
    terms["total"] = terms["bg_pos"] / 4 + terms["fg_pos"] / 4 + terms["neg"] / 2
    return terms


def _weights(aff: torch.Tensor, ind_from: torch.Tensor, ind_to: torch.Tensor, n: int, beta: float):
    """(rows, cols, values) of ``D^-1 A``: ``a^beta`` both ways plus the self-affinity 1 of every cell."""
    if aff.ndim != 1 or aff.shape != ind_from.shape or ind_from.shape != ind_to.shape:
        raise ValueError(f"affinities {tuple(aff.shape)} must be 1-D, one per pair of {tuple(ind_from.shape)} indices")
    diag = torch.arange(n, device=aff.device)
    ind_from, ind_to = ind_from.to(aff.device), ind_to.to(aff.device)
    rows, cols = torch.cat([ind_from, ind_to, diag]), torch.cat([ind_to, ind_from, diag])
    w = aff.float().pow(beta)
    values = torch.cat([w, w, torch.ones(n, device=aff.device)])
    degree = torch.zeros(n, device=aff.device).index_add_(0, rows, values)  # >= 1: the diagonal
    return rows, cols, values / degree[rows]


def transition_matrix(aff: torch.Tensor, ind_from: torch.Tensor, ind_to: torch.Tensor, n: int, *, beta: float):
    """Sparse CSR (n, n) ``T = D^-1 A`` (see the module docstring) from the affinities of the pairs."""
    rows, cols, values = _weights(aff, ind_from, ind_to, n, beta)
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False).coalesce()
    # CSR, not COO: 256 products on a VOC-sized grid took 0.12 s against COO's 2.6 s (1 CPU thread).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


def dense_transition_matrix(aff, ind_from, ind_to, n: int, *, beta: float) -> torch.Tensor:
    """The same ``T`` as a dense (n, n) tensor: the reference for tests and the benchmark."""
    rows, cols, values = _weights(aff, ind_from, ind_to, n, beta)
    return torch.zeros((n, n), device=values.device).index_put_((rows, cols), values)


def random_walk(trans: torch.Tensor, x: torch.Tensor, *, logt: int) -> torch.Tensor:
    """``T^(2^logt) x`` for sparse ``trans`` (n, n) and scores ``x`` (n, C), by ``2^logt`` products."""
    for _ in range(2**logt):
        x = trans @ x
    return x


def random_walk_dense(trans: torch.Tensor, x: torch.Tensor, *, logt: int) -> torch.Tensor:
    """``T^(2^logt) x`` for dense ``trans`` by ``logt`` squarings (PSA's way; the reference)."""
    for _ in range(logt):
        trans = trans @ trans
    return trans @ x


def cams_to_grid(cams: torch.Tensor, grid: tuple[int, int], stride: int, *, alpha: float) -> torch.Tensor:
    """(K + 1, h, w) scores on the feature grid: background ``(1 - max_k CAM_k)^alpha``, then the CAMs.

    The image-size maps are zero-padded to ``grid * stride`` (the network saw an image padded
    the same way) and averaged over each ``stride x stride`` cell, as PSA does.
    """
    k, height, width = cams.shape
    h, w = grid
    if not (h * stride >= height > (h - 1) * stride and w * stride >= width > (w - 1) * stride):
        raise ValueError(f"CAMs of {height}x{width} px do not fit a {h}x{w} grid at stride {stride}")
    top = cams.amax(0) if k else cams.new_zeros((height, width))
    scores = torch.cat([((1 - top) ** alpha)[None], cams]).float()
    scores = F.pad(scores, (0, w * stride - width, 0, h * stride - height))
    return F.avg_pool2d(scores[None], stride)[0]


def propagate_cams(
    embedding: torch.Tensor,
    cams: torch.Tensor,
    class_ids,
    *,
    stride: int,
    radius: int,
    beta: float,
    logt: int,
    alpha: float,
    dense: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Random-walk one image's CAMs with its AffinityNet embedding.

    ``embedding`` (C, h, w) of the image zero-padded to ``(h * stride, w * stride)``; ``cams``
    (K, H, W) in [0, 1] for the K ``class_ids``. Returns (label map (H, W) uint8: 0 or a class id,
    the argmax of the walked [background, CAMs]; the walked CAMs (K, H, W) float32 in [0, 1],
    each divided by its maximum so they can go into a CAM store). ``dense``: the reference walk.
    The walked CAMs do not depend on ``alpha`` (the walk is linear); the label map does.
    """
    class_ids = [int(c) for c in class_ids]
    if cams.ndim != 3 or cams.shape[0] != len(class_ids):
        raise ValueError(f"CAMs of shape {tuple(cams.shape)} for {len(class_ids)} class id(s); expected (K, H, W)")
    _, h, w = embedding.shape
    height, width = cams.shape[1:]
    cams = cams.to(embedding.device)
    if not class_ids:
        return np.zeros((height, width), np.uint8), np.zeros((0, height, width), np.float32)
    x = cams_to_grid(cams, (h, w), stride, alpha=alpha).flatten(1).T  # (cells, K + 1)
    aff = pair_affinities(embedding[None], radius)[0]
    ind_from, ind_to = pair_indices(h, w, radius)
    if dense:
        walked = random_walk_dense(dense_transition_matrix(aff, ind_from, ind_to, h * w, beta=beta), x, logt=logt)
    else:
        walked = random_walk(transition_matrix(aff, ind_from, ind_to, h * w, beta=beta), x, logt=logt)
    up = F.interpolate(
        walked.T.reshape(1, -1, h, w), size=(h * stride, w * stride), mode="bilinear", align_corners=False
    )[0, :, :height, :width]
    labels = np.asarray([0, *class_ids], np.uint8)[up.argmax(0).cpu().numpy()]
    return labels, unit_max(up[1:]).cpu().numpy().astype(np.float32)


def dense_full_resolution_bytes(height: int, width: int, bytes_per_value: int = 4) -> int:
    """What a dense pixel-level transition matrix of an ``height x width`` image would take (never built)."""
    return int(math.prod((height * width, height * width))) * bytes_per_value
