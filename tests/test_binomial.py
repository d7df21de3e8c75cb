"""Binomial importance sampling and the feature-similarity loss, on cases small enough to work out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from wsss_core.train.binomial import (
    BinomialTerms,
    class_probabilities,
    colour_weight,
    feature_similarity_loss,
    importance_sampled_logits,
    window_offsets,
)

MU = 2.5


def test_sampled_scores_follow_sigmoid_weights_and_unlabelled_classes_keep_gap():
    # class 0 (labelled): logits 0 and 20 -> weights 0.5 and ~1: pixel 0 is drawn with probability 1/3
    cams = torch.tensor([[[[0.0, 20.0]], [[3.0, -1.0]]]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    scores = importance_sampled_logits(cams, labels, 30000, generator=g)
    assert scores[0, 1].item() == pytest.approx(1.0)  # unlabelled: GAP (3 - 1) / 2
    scores[0, 0].backward()
    share = cams.grad[0, 0, 0, 0].item()  # d(mean of the drawn logits) / d(logit 0) = share of draws on pixel 0
    assert share == pytest.approx(1 / 3, abs=0.01)
    assert cams.grad[0, 0].sum().item() == pytest.approx(1.0, abs=1e-3)  # float32 sums of 1/30000
    assert scores[0, 0].item() == pytest.approx(20 * (1 - share), abs=1e-3)


def test_ten_draws_land_on_the_one_confident_pixel():
    cams = torch.tensor([[[[12.0, -12.0, -12.0, -12.0]]]], requires_grad=True)
    scores = importance_sampled_logits(cams, torch.tensor([[1.0]]), 10, generator=torch.Generator().manual_seed(1))
    assert scores.item() == 12.0  # GAP would give -6
    F.multilabel_soft_margin_loss(scores, torch.tensor([[1.0]])).backward()
    assert (cams.grad[0, 0, 0, 1:] == 0).all() and cams.grad[0, 0, 0, 0] < 0


def test_class_maps_are_independent_sigmoids_and_background_is_one_minus_their_max():
    cams = torch.tensor([[[[0.0]], [[2.0]], [[9.0]]]])
    probs = class_probabilities(cams, torch.tensor([[1.0, 1.0, 0.0]]))
    s0, s1 = 0.5, 1 / (1 + math.exp(-2))
    torch.testing.assert_close(probs.flatten(), torch.tensor([1 - s1, s0, s1, 0.0]))  # class 2 unlabelled: off


def test_colour_weight_is_minus_one_for_equal_colours_and_changes_sign_at_sigmoid_minus_mu():
    d = torch.tensor([0.0, 1 / (1 + math.exp(MU)), 0.5, 1.0])
    w = colour_weight(d, MU)
    assert w[0].item() == pytest.approx(-1.0, abs=1e-3) and w[1].item() == pytest.approx(0.0, abs=1e-5)
    assert w[2].item() == pytest.approx(math.tanh(MU)) and w[3].item() == pytest.approx(1.0, abs=1e-6)


def two_pixels(right_rgb):
    rgb = torch.zeros(1, 3, 1, 2)
    rgb[..., 1] = torch.tensor(right_rgb).view(3, 1)
    return rgb


def test_two_pixels_by_hand_pull_same_colours_together_and_push_different_ones_apart():
    cams = torch.tensor([[[[2.0, -1.0]]]], requires_grad=True)
    labels = torch.tensor([[1.0]])
    s = torch.sigmoid(torch.tensor([2.0, -1.0]))
    gap = 2 * (s[0] - s[1]).item() ** 2  # squared change of the class map plus that of the background 1 - s
    for rgb, weight in (([0.0, 0.0, 0.0], -1.0), ([1.0, 1.0, 1.0], 1.0)):
        cams.grad = None
        loss = feature_similarity_loss(cams, two_pixels(rgb), labels, sigma=1.0, mu=MU)
        assert loss.item() == pytest.approx(-weight * gap, abs=1e-3)  # one pair; the Gaussian weight cancels
        loss.backward()
        closer = cams.grad[0, 0, 0, 0] > 0 > cams.grad[0, 0, 0, 1]  # descent lowers the high logit, raises the low
        assert closer == (weight < 0)
    # colour distance exactly sigmoid(-mu): neither pulled nor pushed
    step = 1 / (1 + math.exp(MU))
    assert feature_similarity_loss(cams, two_pixels([step] * 3), labels, 1.0, MU).item() == pytest.approx(0, abs=1e-5)


def test_colour_distance_is_the_mean_absolute_channel_difference():
    # one channel differs by 0.2: mean |diff| 0.067 is below sigmoid(-2.5) = 0.076, so the pair is pulled
    # together (the Euclidean distance / sqrt 3, 0.115, would push it apart)
    cams, labels = torch.tensor([[[[2.0, -1.0]]]]), torch.tensor([[1.0]])
    loss = feature_similarity_loss(cams, two_pixels([0.2, 0.0, 0.0]), labels, sigma=1.0, mu=MU)
    s = torch.sigmoid(torch.tensor([2.0, -1.0]))
    w = colour_weight(torch.tensor(0.2 / 3), MU).item()
    assert w < 0 and loss.item() == pytest.approx(-w * 2 * (s[0] - s[1]).item() ** 2, rel=1e-5)


def test_equal_maps_across_a_colour_edge_get_no_push():
    # the squared map distance has zero gradient where the maps agree: an edge inside a region the
    # classifier scores uniformly does not tear it apart; a small difference is only widened
    cams = torch.tensor([[[[1.5, 1.5]]]], requires_grad=True)
    feature_similarity_loss(cams, two_pixels([1.0, 1.0, 1.0]), torch.tensor([[1.0]]), 1.0, MU).backward()
    assert cams.grad.abs().max().item() == 0.0
    cams = torch.tensor([[[[1.6, 1.5]]]], requires_grad=True)
    feature_similarity_loss(cams, two_pixels([1.0, 1.0, 1.0]), torch.tensor([[1.0]]), 1.0, MU).backward()
    assert cams.grad[0, 0, 0, 0] < 0 < cams.grad[0, 0, 0, 1]  # descent raises the higher logit, lowers the lower


def test_pairs_are_weighted_by_a_spatial_gaussian():
    # three pixels in a row, sigma 1: offsets 1 (two pairs, weight e^-1/2) and 2 (one pair, weight e^-2)
    cams = torch.tensor([[[[3.0, 0.0, -3.0]]]])
    rgb = torch.zeros(1, 3, 1, 3)  # one colour: every pair pulled with weight -1 (to 1e-3)
    s = torch.sigmoid(cams).flatten()
    g1, g2 = math.exp(-0.5), math.exp(-2.0)
    c = -colour_weight(torch.tensor(0.0), MU).item()
    sq = lambda a, b: 2 * (s[a] - s[b]) ** 2  # class map and background change by the same amount
    expected = c * (g1 * (sq(0, 1) + sq(1, 2)) + g2 * sq(0, 2)) / (2 * g1 + g2)
    loss = feature_similarity_loss(cams, rgb, torch.tensor([[1.0]]), sigma=1.0, mu=MU)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_unlabelled_classes_do_not_count():
    torch.manual_seed(0)
    cams, rgb = torch.randn(2, 3, 5, 6), torch.rand(2, 3, 20, 24)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    other = cams.clone()
    other[0, 1], other[1, 0], other[1, 2] = 50.0, -7.0, 9.0
    a = feature_similarity_loss(cams, rgb, labels, 5.0, MU)
    b = feature_similarity_loss(other, rgb, labels, 5.0, MU)
    assert a.item() == pytest.approx(b.item(), abs=1e-7)


def test_window_holds_each_pair_once():
    offsets = window_offsets(1.5)  # radius 3
    both = set(offsets) | {(-dy, -dx) for dy, dx in offsets}
    disc = {(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4) if 0 < dy * dy + dx * dx <= 9}
    assert len(offsets) == len(set(offsets)) == len(disc) // 2 and both == disc


def test_terms_undo_the_normalisation_and_apply_the_weights():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    cfg = {"samples": 10, "sampling_weight": 0.2, "similarity_weight": 3.0, "sigma": 2.0, "mu": MU}
    torch.manual_seed(0)
    rgb, cams, labels = torch.rand(2, 3, 16, 16), torch.randn(2, 4, 4, 4), torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    images = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.manual_seed(5)
    terms = BinomialTerms(cfg, mean, std)(None, images, labels, cams, progress=0.3)
    torch.manual_seed(5)
    scores = importance_sampled_logits(cams, labels, 10)
    assert terms["sampling"].item() == pytest.approx(0.2 * F.multilabel_soft_margin_loss(scores, labels).item())
    assert terms["similarity"].item() == pytest.approx(
        3.0 * feature_similarity_loss(cams, rgb, labels, 2.0, MU).item(), rel=1e-5
    )
