"""Colorization: the network sees only the lightness of an image and predicts the mean colours (ab) of its grid
cells, with positive rebalancing weights over the colour bins."""

from __future__ import annotations

import torch
from image_ssl_recipes import image_objective


def test_colorization_sees_only_lightness_and_predicts_the_cells_colours(tmp_path):
    from mmssl.data.lab import rgb_to_lab

    obj = image_objective(tmp_path, "colorization", grid=4, rebalance_images=64)
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 16, 16)
    inputs, ab = obj.targets(rgb)
    lab = rgb_to_lab(rgb)
    grey = inputs * torch.tensor(obj.std).view(1, 3, 1, 1) + torch.tensor(obj.mean).view(1, 3, 1, 1)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-5)
    assert torch.allclose(grey[:, 0], lab[:, 0] / 100, atol=1e-5)  # the input is the lightness, nothing else
    assert torch.allclose(ab[:, :, 0, 0], lab[:, 1:, :4, :4].mean(dim=(2, 3)), atol=1e-4)  # cell (0, 0): its mean ab
    assert not torch.allclose(obj.targets(rgb[:, [2, 0, 1]])[1], ab)  # other colours, other targets
    assert obj.bin_weights.shape == (len(obj.bins),) and (obj.bin_weights > 0).all()
