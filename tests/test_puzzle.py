"""Puzzle-CAM: tiling and merging, the alpha schedule, the reconstruction loss and the terms it adds."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.train.puzzle import PuzzleTerms, alpha_at, merge, reconstruction_loss, tile

CFG = {"tiles": 2, "alpha": 4.0, "ramp": 0.5}


def test_tiles_are_the_image_quarters_in_row_major_order_and_merge_inverts_tile():
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    tiles = tile(x, 2)
    assert tiles.shape == (8, 1, 2, 3)
    # row (i * n + j) * B + b is tile (i, j) of image b
    assert torch.equal(tiles[0], x[0, :, :2, :3]) and torch.equal(tiles[1], x[1, :, :2, :3])
    assert torch.equal(tiles[2], x[0, :, :2, 3:]) and torch.equal(tiles[4], x[0, :, 2:, :3])
    assert torch.equal(tiles[7], x[1, :, 2:, 3:])
    assert torch.equal(merge(tiles, 2), x)
    y = torch.randn(3, 5, 9, 12)
    assert torch.equal(merge(tile(y, 3), 3), y)
    with pytest.raises(ValueError, match="5x6"):
        tile(torch.zeros(1, 1, 5, 6), 2)


def test_alpha_ramps_linearly_to_its_maximum_over_the_first_half():
    assert [alpha_at(p, 4.0, 0.5) for p in (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)] == [0.0, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert alpha_at(0.0, 4.0, 0.0) == 4.0  # no ramp: full weight from the start


def test_reconstruction_loss_counts_labelled_classes_only():
    cams = torch.zeros(1, 3, 1, 2)
    merged = torch.tensor([[[[1.0, -3.0]], [[5.0, 5.0]], [[0.5, 0.0]]]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    # labelled classes 0 and 2: |1| + |-3| + |0.5| + |0| = 4.5, over all 1 * 3 * 1 * 2 = 6 entries
    assert reconstruction_loss(cams, merged, labels).item() == pytest.approx(4.5 / 6)
    cams.requires_grad_(True)
    reconstruction_loss(cams, merged, labels).backward()
    expected = -torch.sign(merged) * labels[:, :, None, None] / 6
    torch.testing.assert_close(cams.grad, expected)


class PositionFree(nn.Module):
    """A 'classifier' whose CAMs at a position depend on that pixel only (1x1 conv, stride 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)

    def cams(self, x):
        return self.conv(x)


class ContextSensitive(PositionFree):
    """CAMs that see a 3x3 neighbourhood: tiles lose context at their borders."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)


def test_terms_for_a_context_free_model_match_the_full_image_and_otherwise_pull_towards_it():
    torch.manual_seed(0)
    images, labels = torch.randn(2, 3, 8, 8), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    model = PositionFree()
    cams = model.cams(images)
    terms = PuzzleTerms(CFG, stride=1, crop_size=8)(model, images, labels, cams, progress=0.25)
    assert terms["puzzle_cls"].item() == pytest.approx(
        F.multilabel_soft_margin_loss(cams.mean(dim=(2, 3)), labels).item(), abs=1e-6
    )
    assert terms["puzzle_reconstruction"].item() == pytest.approx(0.0, abs=1e-6)

    model = ContextSensitive()
    cams = model.cams(images)
    merged = merge(model.cams(tile(images, 2)), 2)
    terms = PuzzleTerms(CFG, stride=1, crop_size=8)(model, images, labels, cams, progress=0.25)
    # alpha(0.25) = 2; the tiles' zero padding changes the maps along the inner tile borders only
    assert terms["puzzle_reconstruction"].item() == pytest.approx(2 * reconstruction_loss(cams, merged, labels).item())
    border = torch.zeros(8, 8, dtype=torch.bool)
    border[3:5, :] = border[:, 3:5] = True
    assert torch.equal((cams - merged).abs().amax(dim=(0, 1)) > 1e-6, border)
    # its gradient reaches the weights through both the full image's and the tiles' CAMs
    terms["puzzle_reconstruction"].backward()
    assert model.conv.weight.grad.abs().sum() > 0


def test_crop_size_must_fit_tiles_of_whole_feature_cells():
    with pytest.raises(ValueError, match="classifier.crop_size: 80 must be a multiple of classifier.puzzle.tiles"):
        PuzzleTerms(CFG, stride=16, crop_size=80)
    PuzzleTerms(CFG, stride=16, crop_size=96)
