"""Lab colour conversion and the colourisation targets: reference Lab values, ab bins over the sRGB gamut, and
class-rebalancing weights that make rare colours count (E_p[w] = 1)."""

from __future__ import annotations

import torch

from mmssl.data.lab import ab_bins, nearest_bin, rebalancing_weights, rgb_to_lab


def test_reference_colours_have_their_published_lab_values():
    rgb = torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0.5, 0.5, 0.5]]).t().reshape(3, 6, 1)
    lab = rgb_to_lab(rgb).reshape(3, 6).t()
    expected = torch.tensor([[100.0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86],
                             [0, 0, 0], [53.39, 0, 0]])
    assert torch.allclose(lab, expected, atol=0.05), lab


def test_bins_cover_the_gamut_and_every_colour_falls_near_one():
    bins = ab_bins(10.0)
    assert 200 < len(bins) < 400 and bins.abs().max() < 110
    torch.manual_seed(0)
    ab = rgb_to_lab(torch.rand(3, 50, 50))[1:].reshape(2, -1).t()
    nearest = bins[nearest_bin(ab, bins)]
    assert (nearest - ab).abs().max() <= 5.0 + 1e-4  # inside its 10-wide bin


def test_rebalancing_weights_favour_rare_bins_and_keep_the_expected_weight_at_one():
    counts = torch.tensor([1000.0, 100.0, 10.0, 1.0])
    weights = rebalancing_weights(counts, mix=0.5)
    p = counts / counts.sum()
    assert abs(float((weights * p).sum()) - 1.0) < 1e-5
    assert (weights[1:] > weights[:-1]).all()  # the rarer, the heavier
    assert torch.allclose(rebalancing_weights(counts, mix=1.0), torch.ones(4))  # uniform mixing: no rebalancing
