"""The view pipelines: uint8 images ``[B, 3, H, W]`` (decoded once, at load time) -> augmented, normalised float
views, a whole batch at a time.

* `BatchImageViews` (CLIP, one view): randomness from torch's global RNG, seeded by the trainer before every
  micro-batch.
* `TwoViews` (image SSL): two views per image, randomness from `view_uniforms` (counter-based), so a row's view
  is the same whatever its batch, process or resume (on another device: same parameters, pixels equal up to
  float rounding).
* `eval_view`: open_clip's evaluation preprocessing (bicubic resize of the shorter side, centre crop, normalise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torchvision.transforms.v2 import functional as TF

from mmssl.data.image_views.config import ImageViewsConfig, TwoViewsConfig, ViewParams
from mmssl.data.image_views.generic import (grid_cells, mask_draws, mixup, mixup_draws, partners, patch_mask,
                                            patch_side)
from mmssl.data.image_views.kernels import (fit_boxes, gaussian_blur, jitter, normalize, resized_crop, rgb_to_gray,
                                            solarize)
from mmssl.data.image_views.rng import ViewDraws, view_uniforms


def _crop_boxes(b: int, h: int, w: int, scale: list[float], ratio: list[float], tries: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised: [B, 4] boxes (x0, y0, x1, y1) in pixels."""
    log_ratio = torch.log(torch.tensor(ratio))
    area_fraction = torch.empty(b, tries).uniform_(scale[0], scale[1])
    aspect = torch.exp(torch.empty(b, tries).uniform_(float(log_ratio[0]), float(log_ratio[1])))
    return fit_boxes(h, w, area_fraction, aspect, torch.rand(b), torch.rand(b), ratio)


def _uniform(b: int, strength: float) -> torch.Tensor:
    return torch.empty(b).uniform_(max(0.0, 1 - strength), 1 + strength)


def color_jitter(x: torch.Tensor, cfg: ImageViewsConfig, apply: torch.Tensor) -> torch.Tensor:
    """ColorJitter (brightness, contrast, saturation, hue; in that fixed order) on the images where ``apply``,
    factors drawn from torch's global RNG."""
    b = x.shape[0]
    one = torch.ones(b)
    bright = torch.where(apply, _uniform(b, cfg.brightness), one) if cfg.brightness else None
    contrast = torch.where(apply, _uniform(b, cfg.contrast), one) if cfg.contrast else None
    sat = torch.where(apply, _uniform(b, cfg.saturation), one) if cfg.saturation else None
    hue = torch.where(apply, torch.empty(b).uniform_(-cfg.hue, cfg.hue), torch.zeros(b)) if cfg.hue else None
    return jitter(x, bright, contrast, sat, hue)


def _blur_where(x: torch.Tensor, apply: torch.Tensor, sigma: torch.Tensor, cfg: ImageViewsConfig) -> torch.Tensor:
    """Gaussian-blur the images where `apply` (kernel: ``blur_kernel_size``, else 3 sigma_max each side)."""
    kernel = cfg.blur_kernel_size or max(3, int(2 * math.ceil(3 * cfg.blur_sigma[1]) + 1))
    kernel = min(kernel, 2 * (min(x.shape[-2:]) // 2) - 1)
    if kernel < 3 or not bool(apply.any()):
        return x
    idx = apply.nonzero().flatten().to(x.device)
    x = x.clone()
    x[idx] = gaussian_blur(x[idx], sigma.to(x.device)[idx], kernel)
    return x


class BatchImageViews:
    """Callable: uint8 ``[B, 3, H, W]`` -> augmented, normalised float ``[B, 3, size, size]``."""

    def __init__(self, cfg: ImageViewsConfig, size: int, mean: Sequence[float], std: Sequence[float]):
        self.cfg, self.size, self.mean, self.std = cfg, size, tuple(mean), tuple(std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, _, h, w = images.shape
        x = images.float().div_(255)
        if cfg.random_resized_crop:
            x = resized_crop(x, _crop_boxes(b, h, w, cfg.crop_scale, cfg.crop_ratio), self.size)
        elif (h, w) != (self.size, self.size):
            x = resized_crop(x, torch.tensor([[0.0, 0.0, w, h]]).expand(b, 4), self.size)
        if cfg.horizontal_flip:
            flip = (torch.rand(b) < cfg.horizontal_flip).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        if cfg.color_jitter:
            x = color_jitter(x, cfg, torch.rand(b) < cfg.color_jitter)
        if cfg.grayscale:
            gray = (torch.rand(b) < cfg.grayscale).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(gray, rgb_to_gray(x).expand_as(x), x)
        if cfg.gaussian_blur:
            apply = torch.rand(b) < cfg.gaussian_blur
            sigma = torch.empty(b).uniform_(cfg.blur_sigma[0], cfg.blur_sigma[1])
            x = _blur_where(x, apply, sigma, cfg)
        if getattr(cfg, "solarize", 0.0):
            x = solarize(x, torch.rand(b) < cfg.solarize, cfg.solarize_threshold)
        x = x.clamp_(0, 1)
        if cfg.mixup:  # the partner: another image of this batch, drawn from the global RNG
            apply, lam_u, offset = torch.rand(b) < cfg.mixup, torch.rand(b), torch.rand(b)
            x = mixup(x, partners(torch.arange(b), offset), apply, lam_u, cfg.mixup_alpha)
        x = normalize(x, self.mean, self.std)
        if cfg.mask_ratio:
            patch = patch_side(self.size, cfg.mask_patch)
            noise = torch.rand(b, grid_cells(self.size, patch))
            x = x.masked_fill(patch_mask(noise, cfg.mask_ratio, self.size, patch).to(x.device), 0.0)
        return x


def eval_view(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """open_clip's evaluation preprocessing for images already resized and centre-cropped to ``size`` at load
    time (see `mmssl.data.images`): scale to [0, 1] and normalise."""
    x = images.float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = TF.center_crop(TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), size)
    return normalize(x.clamp_(0, 1), mean, std)


class TwoViews:
    """Callable: (uint8 ``[B, 3, H, W]``, row indices ``[B]``, epoch, seed) -> two augmented, normalised float
    views ``[B, 3, size, size]``. View ``v`` of row ``r`` is a function of (seed, epoch, r, v) only; it runs
    on the device of the images."""

    def __init__(self, cfg: TwoViewsConfig, size: int, mean: Sequence[float], std: Sequence[float]):
        self.cfg, self.size, self.mean, self.std = cfg, size, tuple(mean), tuple(std)
        self.views = cfg.resolve(size)

    def __call__(self, images: torch.Tensor, rows: torch.Tensor, epoch: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(images, rows, epoch, seed, 0), self.view(images, rows, epoch, seed, 1)

    def view(self, images: torch.Tensor, rows: torch.Tensor, epoch: int, seed: int, which: int,
             stream: int | None = None) -> torch.Tensor:
        """View `which` (0 or 1: whose parameters) of a batch; `stream` (default `which`) names its random
        draws, so further views with the same parameters (e.g. SwAV's small crops) get their own."""
        cfg, d = self.views[which], ViewDraws
        b, _, h, w = images.shape
        u = view_uniforms(rows.to(images.device), epoch, seed, which if stream is None else stream)
        x = images.float().div_(255)
        if cfg.random_resized_crop:
            lo, hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
            area = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * u[:, d.AREA:d.AREA + d.CROP_TRIES]
            aspect = torch.exp(lo + (hi - lo) * u[:, d.ASPECT:d.ASPECT + d.CROP_TRIES])
            boxes = fit_boxes(h, w, area, aspect, u[:, d.X], u[:, d.Y], cfg.crop_ratio)
            x = resized_crop(x, boxes, self.size, per_image=True)
        elif (h, w) != (self.size, self.size):
            full = torch.tensor([[0.0, 0.0, w, h]], device=x.device).expand(b, 4)
            x = resized_crop(x, full, self.size, per_image=True)
        if cfg.horizontal_flip:
            x = torch.where((u[:, d.FLIP] < cfg.horizontal_flip).view(-1, 1, 1, 1), x.flip(-1), x)
        if cfg.color_jitter:
            apply = u[:, d.JITTER] < cfg.color_jitter

            def factor(slot: int, strength: float) -> torch.Tensor | None:
                if not strength:
                    return None
                low = max(0.0, 1 - strength)
                return torch.where(apply, low + (1 + strength - low) * u[:, slot], torch.ones_like(u[:, slot]))

            hue = (torch.where(apply, cfg.hue * (2 * u[:, d.HUE] - 1), torch.zeros_like(u[:, d.HUE]))
                   if cfg.hue else None)
            x = jitter(x, factor(d.BRIGHT, cfg.brightness), factor(d.CONTRAST, cfg.contrast),
                       factor(d.SAT, cfg.saturation), hue)
        if cfg.grayscale:
            x = torch.where((u[:, d.GRAY] < cfg.grayscale).view(-1, 1, 1, 1), rgb_to_gray(x).expand_as(x), x)
        if cfg.gaussian_blur:
            sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[:, d.SIGMA]
            x = _blur_where(x, u[:, d.BLUR] < cfg.gaussian_blur, sigma, cfg)
        if cfg.solarize:
            x = solarize(x, u[:, d.SOLARIZE] < cfg.solarize, cfg.solarize_threshold)
        return self.generic(x.clamp_(0, 1), rows.to(images.device), epoch, seed,
                            which if stream is None else stream, cfg)

    def generic(self, x: torch.Tensor, rows: torch.Tensor, epoch: int, seed: int, stream: int,
                cfg: ViewParams) -> torch.Tensor:
        """Mixup, normalisation, then patch masking (`mmssl.data.image_views.generic`) of a view in [0, 1].
        Mask and mixup's lambda are functions of (seed, epoch, row, stream); the mixing partner is another row
        of the batch, chosen by the row's draw among the batch's rows sorted by id (independent of their order,
        not of which rows share the batch)."""
        if cfg.mixup:
            u = mixup_draws(rows, epoch, seed, stream)
            x = mixup(x, partners(rows, u[:, 2]), u[:, 0] < cfg.mixup, u[:, 1], cfg.mixup_alpha)
        x = normalize(x, self.mean, self.std)
        if cfg.mask_ratio:
            patch = patch_side(x.shape[-1], cfg.mask_patch)
            noise = mask_draws(rows, epoch, seed, stream, x.shape[-1], patch)
            x = x.masked_fill(patch_mask(noise, cfg.mask_ratio, x.shape[-1], patch), 0.0)
        return x

    def describe(self) -> dict[str, Any]:
        """The resolved parameters of both views (for logs, metrics and model cards)."""
        return {"preset": self.cfg.preset, "view1": asdict(self.views[0]), "view2": asdict(self.views[1])}
