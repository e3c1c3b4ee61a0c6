"""Batched image kernels: each takes float images ``[B, 3, H, W]`` in [0, 1] and per-image parameters, and
applies torchvision's ``transforms.v2`` definition to every image at once (no Python loop over images)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def fit_boxes(h: int, w: int, area_fraction: torch.Tensor, aspect: torch.Tensor, ux: torch.Tensor,
              uy: torch.Tensor, ratio: list[float]) -> torch.Tensor:
    """RandomResizedCrop's geometry from drawn numbers: per image the first of the tries (area fraction and
    aspect, ``[B, T]``) that fits, placed at ``ux, uy`` in [0, 1); else the central crop. -> [B, 4] boxes."""
    b = area_fraction.shape[0]
    target = h * w * area_fraction
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(b, dtype=torch.long, device=ok.device))
    rows = torch.arange(b, device=ok.device)
    cw, ch, found = cw[rows, first], ch[rows, first], ok.any(1)
    # Fallback (no try fits): the central crop with the ratio clamped into range, as torchvision does.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(h * ratio[1]), h
    else:
        fw, fh = w, h
    cw = torch.where(found, cw, torch.full_like(cw, fw))
    ch = torch.where(found, ch, torch.full_like(ch, fh))
    x0 = torch.floor(ux * (w - cw + 1))
    y0 = torch.floor(uy * (h - ch + 1))
    x0 = torch.where(found, x0, torch.full_like(x0, (w - fw) // 2))
    y0 = torch.where(found, y0, torch.full_like(y0, (h - fh) // 2))
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int, per_image: bool = False) -> torch.Tensor:
    """Crop each float image to its box and resize to ``size`` x ``size`` in one ``roi_align`` call (bilinear,
    averaged over the source pixels of each output pixel, so downscaling is anti-aliased). The number of
    source samples per output pixel follows the largest box of the batch, or with `per_image` each box's own
    size (so an image's view does not depend on the rest of its batch)."""
    b, _, h, w = images.shape
    rois = torch.cat([torch.arange(b, dtype=images.dtype, device=images.device)[:, None], boxes.to(images)], dim=1)
    if per_image:
        sampling = 0  # roi_align's adaptive mode: ceil(box side / size) samples per output pixel, per box
    else:
        sampling = max(1, math.ceil(max(float((boxes[:, 2] - boxes[:, 0]).max()),
                                        float((boxes[:, 3] - boxes[:, 1]).max())) / size))
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=sampling, aligned=True)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images, ``[B, 3, H, W]`` -> ``[B, 1, H, W]`` (torchvision's weights)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * other).clamp_(0, 1)


def jitter(x: torch.Tensor, bright: torch.Tensor | None, contrast: torch.Tensor | None, sat: torch.Tensor | None,
           hue: torch.Tensor | None) -> torch.Tensor:
    """ColorJitter with per-image factors, in a fixed order: brightness, contrast, saturation, hue (torchvision
    permutes the order per image). None: that step off; factor 1 / hue 0: that image unchanged."""
    dev = x.device
    if bright is not None:
        x = _blend(x, torch.zeros_like(x), bright.to(dev))
    if contrast is not None:
        x = _blend(x, rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True), contrast.to(dev))
    if sat is not None:
        x = _blend(x, rgb_to_gray(x), sat.to(dev))
    if hue is not None and bool((hue != 0).any()):
        x = torch.where((hue != 0).to(dev).view(-1, 1, 1, 1), adjust_hue(x, hue.to(dev)), x)
    return x


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of image ``i`` by ``shift[i]`` (a fraction of the colour circle), as torchvision's
    ``adjust_hue`` does (RGB -> HSV, shift, back), for a whole batch at once."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.remainder(h / 6.0 + shift.view(-1, 1, 1), 1.0)
    # HSV -> RGB: channel n is v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1; v*s = delta
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float) -> torch.Tensor:
    """RandomSolarize: invert the pixels at or above `threshold` (in [0, 1]) in the images where `apply`."""
    flip = apply.to(x.device).view(-1, 1, 1, 1) & (x >= threshold)
    return torch.where(flip, 1.0 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur image ``i`` with a separable Gaussian of ``sigma[i]`` (reflect padding, as torchvision): one grouped
    convolution per axis with a kernel per image."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device)
    k = torch.exp(-0.5 * (t[None] / sigma.to(x.device)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, K]
    pad = kernel_size // 2
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect" if pad < min(h, w) else "replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
