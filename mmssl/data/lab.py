"""sRGB <-> CIE Lab (D65 white) in torch, and the quantised ab colour bins of colourisation (Zhang, Isola &
Efros 2016): a grid of `step`-wide bins over the ab plane, kept where some sRGB colour falls."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
AB_RANGE = 110.0


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """``[..., 3, H, W]`` sRGB in [0, 1] -> Lab (L in [0, 100], a and b roughly in [-110, 110])."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,...jhw->...ihw", _RGB_TO_XYZ.to(rgb), linear)
    xyz = xyz / _WHITE.to(rgb).view(3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lightness = 116 * f[..., 1:2, :, :] - 16
    a = 500 * (f[..., 0:1, :, :] - f[..., 1:2, :, :])
    b = 200 * (f[..., 1:2, :, :] - f[..., 2:3, :, :])
    return torch.cat([lightness, a, b], dim=-3)


@functools.lru_cache(maxsize=4)
def ab_bins(step: float = 10.0) -> Tensor:
    """``[Q, 2]`` centres of the ab bins that some sRGB colour reaches (262 for step 10 from a 48-level RGB grid;
    the paper counts 313 with its own gamut estimate)."""
    levels = torch.linspace(0, 1, 48)
    grid = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, -1, 1)
    ab = rgb_to_lab(grid)[1:].reshape(2, -1).t()
    index = torch.floor((ab + AB_RANGE) / step).long()
    side = int(2 * AB_RANGE / step)
    used = torch.unique(index[:, 0].clamp(0, side - 1) * side + index[:, 1].clamp(0, side - 1))
    return torch.stack([used // side, used % side], dim=1).float() * step - AB_RANGE + step / 2


def nearest_bin(ab: Tensor, bins: Tensor) -> Tensor:
    """Index of the nearest bin centre of every ab pair ``[N, 2]``."""
    return torch.cdist(ab.float(), bins.to(ab.device)).argmin(dim=1)


def rebalancing_weights(counts: Tensor, mix: float = 0.5, sigma_bins: float = 0.5, bins: Tensor | None = None,
                        step: float = 10.0) -> Tensor:
    """Per-bin loss weights w ~ 1 / ((1 - mix) * p_smoothed + mix / Q), scaled so that E_p[w] = 1 (the paper's
    class rebalancing: rare saturated colours count as much as the common greys)."""
    p = counts.double() / counts.sum().clamp(min=1)
    if bins is not None and sigma_bins > 0:
        distance = torch.cdist(bins.double(), bins.double()) / step
        kernel = torch.exp(-distance.pow(2) / (2 * sigma_bins**2))
        p = kernel @ p / kernel.sum(dim=1)
        p = p / p.sum()
    weights = 1.0 / ((1 - mix) * p + mix / len(p))
    weights = weights / (weights * (counts.double() / counts.sum().clamp(min=1))).sum()
    return weights.float()
