"""Random image views for contrastive training, computed on a whole uint8 batch at once.

Images are kept decoded as uint8 tensors ``[B, 3, H, W]`` (decoding happens once, when data is loaded);
each training step turns a batch into augmented, normalised float views. The transforms follow
torchvision's ``transforms.v2`` definitions (RandomResizedCrop, RandomHorizontalFlip, ColorJitter,
RandomGrayscale, GaussianBlur), with independent random parameters per image, but run as a few batched
tensor operations instead of a Python loop per image:

* the random-resized crop of every image is one ``torchvision.ops.roi_align`` call (bilinear, averaged
  over the source pixels that fall in each output pixel, so downscaling is anti-aliased);
* colour jitter uses torchvision's blend formulas with a factor per image (hue via
  ``transforms.v2.functional.adjust_hue`` on the images that draw a hue shift);
* Gaussian blur is one grouped convolution with a kernel per image.

Randomness comes from torch's global RNG, which the trainer seeds before every micro-batch.

Evaluation uses open_clip's preprocessing: resize the shorter side (bicubic) and centre-crop to the model's
size, then normalise with the model's mean and std (:func:`eval_view`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from mmssl.schema import NonNegativeFloat, PositiveFloat, PositiveInt, Probability, Range


@dataclass
class ImageViewsConfig:
    """Per-recipe training augmentation (``objective.views``). Probabilities are per image.

    Defaults are open_clip's training views (a mild random-resized crop); flips, colour changes and blur
    are opt-in because they can contradict captions ("on the left", "a red ...").
    """

    random_resized_crop: bool = True
    crop_scale: list[Annotated[float, Range(0, 1, open_low=True)]] = field(default_factory=lambda: [0.9, 1.0])
    crop_ratio: list[PositiveFloat] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    horizontal_flip: Probability = 0.0
    color_jitter: Probability = 0.0
    brightness: NonNegativeFloat = 0.4
    contrast: NonNegativeFloat = 0.4
    saturation: NonNegativeFloat = 0.4
    hue: Annotated[float, Range(0, 0.5)] = 0.1
    grayscale: Probability = 0.0
    gaussian_blur: Probability = 0.0
    blur_sigma: list[PositiveFloat] = field(default_factory=lambda: [0.1, 2.0])
    blur_kernel_size: PositiveInt | None = None

    def __post_init__(self) -> None:
        for name, pair, low in (("crop_scale", self.crop_scale, 0.0), ("crop_ratio", self.crop_ratio, 0.0),
                                ("blur_sigma", self.blur_sigma, 0.0)):
            if len(pair) != 2 or not low < pair[0] <= pair[1]:
                raise ValueError(f"objective.views.{name} must be [min, max] with 0 < min <= max")
        if self.blur_kernel_size is not None and self.blur_kernel_size % 2 == 0:
            raise ValueError("objective.views.blur_kernel_size must be a positive odd number")


def _crop_boxes(b: int, h: int, w: int, scale: list[float], ratio: list[float], tries: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised: [B, 4] boxes (x0, y0, x1, y1) in pixels."""
    area = h * w
    log_ratio = torch.log(torch.tensor(ratio))
    target = area * torch.empty(b, tries).uniform_(scale[0], scale[1])
    aspect = torch.exp(torch.empty(b, tries).uniform_(float(log_ratio[0]), float(log_ratio[1])))
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(b, dtype=torch.long))
    rows = torch.arange(b)
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
    x0 = torch.floor(torch.rand(b) * (w - cw + 1))
    y0 = torch.floor(torch.rand(b) * (h - ch + 1))
    x0 = torch.where(found, x0, torch.full_like(x0, (w - fw) // 2))
    y0 = torch.where(found, y0, torch.full_like(y0, (h - fh) // 2))
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each float image to its box and resize to ``size`` x ``size`` in one batched call."""
    b, _, h, w = images.shape
    rois = torch.cat([torch.arange(b, dtype=images.dtype, device=images.device)[:, None], boxes.to(images)], dim=1)
    ratio = max(float((boxes[:, 2] - boxes[:, 0]).max()), float((boxes[:, 3] - boxes[:, 1]).max())) / size
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=max(1, math.ceil(ratio)), aligned=True)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * other).clamp_(0, 1)


def _uniform(b: int, strength: float) -> torch.Tensor:
    return torch.empty(b).uniform_(max(0.0, 1 - strength), 1 + strength)


def color_jitter(x: torch.Tensor, cfg: ImageViewsConfig, apply: torch.Tensor) -> torch.Tensor:
    """ColorJitter (brightness, contrast, saturation, hue; in that fixed order) on the images where ``apply``."""
    b = x.shape[0]
    one = torch.ones(b)
    bright = torch.where(apply, _uniform(b, cfg.brightness), one) if cfg.brightness else one
    contrast = torch.where(apply, _uniform(b, cfg.contrast), one) if cfg.contrast else one
    sat = torch.where(apply, _uniform(b, cfg.saturation), one) if cfg.saturation else one
    hue = torch.where(apply, torch.empty(b).uniform_(-cfg.hue, cfg.hue), torch.zeros(b)) if cfg.hue else None
    dev = x.device
    if cfg.brightness:
        x = _blend(x, torch.zeros_like(x), bright.to(dev))
    if cfg.contrast:
        x = _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), contrast.to(dev))
    if cfg.saturation:
        x = _blend(x, _gray(x), sat.to(dev))
    if hue is not None:
        idx = (hue != 0).nonzero().flatten().tolist()
        if idx:
            x = x.clone()
            for i in idx:
                x[i] = TF.adjust_hue(x[i], float(hue[i]))
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur image ``i`` with a separable Gaussian of ``sigma[i]`` (reflect padding, as torchvision)."""
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


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class BatchImageViews:
    """Callable: uint8 ``[B, 3, H, W]`` -> augmented, normalised float ``[B, 3, size, size]``."""

    def __init__(self, cfg: ImageViewsConfig, size: int, mean, std):
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
            x = torch.where(gray, _gray(x).expand_as(x), x)
        if cfg.gaussian_blur:
            apply = torch.rand(b) < cfg.gaussian_blur
            sigma = torch.empty(b).uniform_(cfg.blur_sigma[0], cfg.blur_sigma[1])
            kernel = cfg.blur_kernel_size or max(3, int(2 * math.ceil(3 * cfg.blur_sigma[1]) + 1))
            kernel = min(kernel, 2 * (min(x.shape[-2:]) // 2) - 1)
            if kernel >= 3 and apply.any():
                idx = apply.nonzero().flatten().to(x.device)
                x = x.clone()
                x[idx] = gaussian_blur(x[idx], sigma[apply], kernel)
        return normalize(x.clamp_(0, 1), self.mean, self.std)


def eval_view(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """open_clip's evaluation preprocessing for images already resized and centre-cropped to ``size`` at load
    time (see `mmssl.data.image_text`): scale to [0, 1] and normalise."""
    x = images.float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = TF.center_crop(TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), size)
    return normalize(x.clamp_(0, 1), mean, std)
