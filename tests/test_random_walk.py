"""PSA's pairs, affinities, loss, random walk: brute-force pair sets, symmetry, sparse == dense, loss by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from wsss_core.data.voc_layout import IGNORE_INDEX
from wsss_core.refine.random_walk import (
    LOG_EPS,
    affinity_loss,
    cams_to_grid,
    dense_full_resolution_bytes,
    dense_transition_matrix,
    displacements,
    pair_affinities,
    pair_indices,
    pair_labels,
    propagate_cams,
    random_walk,
    random_walk_dense,
    transition_matrix,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs; the machine is shared
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def brute_force_pairs(height: int, width: int, radius: int) -> set[tuple[int, int]]:
    """Every unordered pair of cells closer than ``radius``, as (earlier, later) in raster order."""
    cells = [(y, x) for y in range(height) for x in range(width)]
    return {
        (p[0] * width + p[1], q[0] * width + q[1])
        for p, q in itertools.combinations(cells, 2)
        if (p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 < radius**2
    }


@pytest.mark.parametrize("height,width,radius", [(5, 6, 3), (7, 4, 5), (1, 9, 4), (3, 3, 5), (2, 2, 2), (6, 6, 2)])
def test_pair_index_is_every_close_pair_once(height, width, radius):
    ind_from, ind_to = pair_indices(height, width, radius)
    pairs = list(zip(ind_from.tolist(), ind_to.tolist()))
    assert len(pairs) == len(set(pairs))  # no pair twice
    # the half-plane: "to" always comes later in raster order, so no pair appears in both directions
    assert set(pairs) == brute_force_pairs(height, width, radius)
    assert ind_from.dtype == torch.int64


def test_displacements_follow_psa():
    d5 = displacements(5)
    assert len(d5) == 34 and d5[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)] and d5[4] == (1, -4)
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in d5)
    assert 2 * len(d5) + 1 == sum(dy * dy + dx * dx < 25 for dy in range(-5, 6) for dx in range(-5, 6))
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="radius"):
            displacements(bad)


def test_affinities_match_the_formula_and_are_symmetric():
    emb = torch.randn(2, 7, 5, 6)
    aff = pair_affinities(emb, 3)
    ind_from, ind_to = pair_indices(5, 6, 3)
    flat = emb.flatten(2)
    expected = torch.exp(-(flat[:, :, ind_from] - flat[:, :, ind_to]).abs().mean(1))
    torch.testing.assert_close(aff, expected)
    assert aff.shape == (2, len(ind_from)) and aff.min() > 0 and aff.max() <= 1
    # a_ij = a_ji: the mirrored embedding pairs the same cells the other way round
    mirrored = pair_affinities(emb.flip(-1).flip(-2), 3)
    n = 30
    by_pair = {(f, t): a for f, t, a in zip(ind_from.tolist(), ind_to.tolist(), aff[0].tolist())}
    for f, t, a in zip(ind_from.tolist(), ind_to.tolist(), mirrored[0].tolist()):
        assert math.isclose(by_pair[(n - 1 - t, n - 1 - f)], a, rel_tol=1e-6)
    # A = T / diag(T) is symmetric with unit diagonal (self-affinity exp(0) = 1)
    trans = dense_transition_matrix(aff[0], ind_from, ind_to, n, beta=1.0)
    adj = trans / trans.diagonal()[:, None]
    torch.testing.assert_close(adj, adj.T)
    torch.testing.assert_close(adj.diagonal(), torch.ones(n))


def test_transition_is_row_stochastic_and_sparse_walk_equals_dense():
    h, w, radius = 6, 7, 4
    ind_from, ind_to = pair_indices(h, w, radius)
    aff = pair_affinities(torch.randn(1, 5, h, w), radius)[0]
    sparse = transition_matrix(aff, ind_from, ind_to, h * w, beta=8.0)
    dense = dense_transition_matrix(aff, ind_from, ind_to, h * w, beta=8.0)
    assert sparse.layout == torch.sparse_csr and sparse._nnz() == 2 * len(ind_from) + h * w
    torch.testing.assert_close(sparse.to_dense(), dense)
    torch.testing.assert_close(dense.sum(1), torch.ones(h * w))
    assert dense.min() >= 0
    x = torch.rand(h * w, 3)
    for logt in (0, 3, 8):
        torch.testing.assert_close(
            random_walk(sparse, x, logt=logt), random_walk_dense(dense, x, logt=logt), rtol=1e-4, atol=1e-5
        )
    # a row-stochastic walk keeps every score within its input's range and constants fixed
    walked = random_walk(sparse, x, logt=5)
    assert walked.min() >= x.min() - 1e-6 and walked.max() <= x.max() + 1e-6
    torch.testing.assert_close(random_walk(sparse, torch.ones(h * w, 1), logt=5), torch.ones(h * w, 1))


def test_propagation_sparse_equals_dense_on_random_inputs():
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(16, 6, 7, generator=gen)
    cams = torch.rand(2, 22, 27, generator=gen)  # 6 x 7 cells at stride 4, the last row and column partial
    kw = dict(stride=4, radius=5, beta=8, logt=8, alpha=16)
    labels, walked = propagate_cams(emb, cams, [3, 7], **kw)
    labels_dense, walked_dense = propagate_cams(emb, cams, [3, 7], dense=True, **kw)
    assert labels.shape == (22, 27) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 3, 7}
    np.testing.assert_array_equal(labels, labels_dense)
    np.testing.assert_allclose(walked, walked_dense, rtol=1e-4, atol=1e-5)
    assert walked.shape == (2, 22, 27) and walked.dtype == np.float32 and walked.min() >= 0 and walked.max() <= 1
    empty_labels, empty = propagate_cams(emb, cams[:0], [], **kw)
    assert (empty_labels == 0).all() and empty.shape == (0, 22, 27)


def test_walk_spreads_within_a_region_and_stops_at_its_boundary():
    emb = torch.zeros(4, 6, 8)
    emb[:, :, 4:] = 20.0  # two regions: affinity exp(-20) across, 1 within
    cams = torch.zeros(1, 24, 32)
    cams[0, :16, :16] = 1.0  # 16 of the left region's 24 cells
    labels, walked = propagate_cams(emb, cams, [5], stride=4, radius=3, beta=8, logt=6, alpha=16)
    grid = cams_to_grid(cams, (6, 8), 4, alpha=16)
    assert grid.shape == (2, 6, 8) and grid[1, 0, 0] == 1.0 and grid[1, 5, 0] == 0.0 and grid[0, 5, 0] == 1.0
    left = walked[0, :, :14]  # away from the bilinear seam at x = 16
    assert left.min() > 0.99  # spread evenly over its region ...
    assert walked[0, :, 18:].max() < 1e-6  # ... and nothing crossed
    # after the walk every left cell holds class 2/3 vs background 1/3, the right ones background 1
    assert (labels[:, :14] == 5).all() and (labels[:, 18:] == 0).all()


def test_grid_scores_and_checks():
    cams = torch.tensor([[[0.0, 0.5, 1.0]], [[0.2, 0.25, 0.0]]])  # (2, 1, 3) at stride 2 -> a 1 x 2 grid
    grid = cams_to_grid(cams, (1, 2), 2, alpha=2)
    bg = torch.tensor([0.64, 0.25, 0.0])  # (1 - max over classes)^2
    expected_bg = torch.tensor([(bg[0] + bg[1]) / 4, bg[2] / 4])  # zero padding counts in the average
    torch.testing.assert_close(grid[0, 0], expected_bg)
    torch.testing.assert_close(grid[1, 0], torch.tensor([0.5 / 4, 1.0 / 4]))
    with pytest.raises(ValueError, match="do not fit a 1x1 grid at stride 2"):
        cams_to_grid(cams, (1, 1), 2, alpha=2)
    with pytest.raises(ValueError, match="for 1 class id"):
        propagate_cams(torch.zeros(4, 1, 2), cams, [1], stride=2, radius=2, beta=8, logt=1, alpha=16)
    assert dense_full_resolution_bytes(375, 500) == (375 * 500) ** 2 * 4


def test_loss_by_hand_and_its_gradient():
    # 2 x 2 grid, radius 2: all 6 pairs. One channel, so a_ij = exp(-|f_i - f_j|).
    f = torch.tensor([0.0, 0.5, 1.0, 3.0])
    emb = f.reshape(1, 1, 2, 2).repeat(2, 1, 1, 1).requires_grad_(True)
    labels = torch.tensor([[[0, 0], [1, IGNORE_INDEX]], [[2, 2], [2, 0]]])
    ind_from, ind_to = pair_indices(2, 2, 2)
    aff = pair_affinities(emb, 2)
    terms = affinity_loss(aff, labels, ind_from, ind_to)

    a = {(i, j): math.exp(-abs(f[i] - f[j]).item()) for i in range(4) for j in range(4)}
    pos, neg = (lambda v: -math.log(v + LOG_EPS)), (lambda v: -math.log(1 + LOG_EPS - v))
    # image 0 (cells 0, 0, 1, void): bg (0,1); neg (0,2), (1,2); the rest touch the void cell
    # image 1 (cells 2, 2, 2, 0): fg (0,1), (0,2), (1,2); neg (0,3), (1,3), (2,3)
    bg = pos(a[0, 1])
    fg = (pos(a[0, 1]) + pos(a[0, 2]) + pos(a[1, 2])) / 3
    ng = (neg(a[0, 2]) + neg(a[1, 2]) + neg(a[0, 3]) + neg(a[1, 3]) + neg(a[2, 3])) / 5
    for name, value in (("bg_pos", bg), ("fg_pos", fg), ("neg", ng), ("total", bg / 4 + fg / 4 + ng / 2)):
        assert math.isclose(terms[name].item(), value, rel_tol=1e-5), name
    bg_mask, fg_mask, neg_mask = pair_labels(labels, ind_from, ind_to)
    assert (bg_mask.sum(), fg_mask.sum(), neg_mask.sum()) == (1, 3, 5) and not (bg_mask & neg_mask).any()

    terms["total"].backward()
    grad = emb.grad.flatten(1)
    assert grad[0, 3] == 0 and (grad[0, :3] != 0).all()  # the void cell gets nothing from its pairs
    assert (grad[1] != 0).all()

    # A batch without any labelled pair: loss 0 and zero gradient, not NaN.
    emb.grad = None
    void = affinity_loss(pair_affinities(emb, 2), torch.full_like(labels, IGNORE_INDEX), ind_from, ind_to)
    void["total"].backward()
    assert void["total"].item() == 0 and emb.grad.abs().max() == 0
