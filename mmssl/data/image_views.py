"""Random image views for contrastive and self-supervised training, computed on a whole uint8 batch at once.

Images are kept decoded as uint8 tensors ``[B, 3, H, W]`` (decoding happens once, when data is loaded);
each training step turns a batch into augmented, normalised float views. The transforms follow
torchvision's ``transforms.v2`` definitions (RandomResizedCrop, RandomHorizontalFlip, ColorJitter,
RandomGrayscale, GaussianBlur, RandomSolarize), with independent random parameters per image, but run as a
few batched tensor operations instead of a Python loop per image:

* the random-resized crop of every image is one ``torchvision.ops.roi_align`` call (bilinear, averaged
  over the source pixels that fall in each output pixel, so downscaling is anti-aliased);
* colour jitter uses torchvision's blend formulas with a factor per image, in a fixed order (brightness,
  contrast, saturation, hue; torchvision permutes the order per image), the hue shift in HSV per image;
* Gaussian blur is one grouped convolution with a kernel per image.

Two pipelines share these operations:

* `BatchImageViews` (CLIP, one view): randomness from torch's global RNG, seeded by the trainer before
  every micro-batch;
* `TwoViews` (image SSL): two views per image from presets (`simclr`, `byol`) with per-recipe overrides
  (`TwoViewsConfig`). Every random number is a counter-based hash of (seed, epoch, row, view, draw), so a
  row's view depends on nothing else: not on the rest of its batch, the process, or a resume (on another
  device its parameters are the same and its pixels equal up to float rounding).

Evaluation uses open_clip's preprocessing: resize the shorter side (bicubic) and centre-crop to the model's
size, then normalise with the model's mean and std (:func:`eval_view`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Annotated, Any, Literal

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
    log_ratio = torch.log(torch.tensor(ratio))
    area_fraction = torch.empty(b, tries).uniform_(scale[0], scale[1])
    aspect = torch.exp(torch.empty(b, tries).uniform_(float(log_ratio[0]), float(log_ratio[1])))
    return fit_boxes(h, w, area_fraction, aspect, torch.rand(b), torch.rand(b), ratio)


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
    """Crop each float image to its box and resize to ``size`` x ``size`` in one batched call. The number of
    source samples averaged per output pixel follows the largest box of the batch, or with `per_image` each
    box's own size (so an image's view does not depend on the rest of its batch)."""
    b, _, h, w = images.shape
    rois = torch.cat([torch.arange(b, dtype=images.dtype, device=images.device)[:, None], boxes.to(images)], dim=1)
    if per_image:
        sampling = 0  # roi_align's adaptive mode: ceil(box side / size) samples per output pixel, per box
    else:
        sampling = max(1, math.ceil(max(float((boxes[:, 2] - boxes[:, 0]).max()),
                                        float((boxes[:, 3] - boxes[:, 1]).max())) / size))
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=sampling, aligned=True)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * other).clamp_(0, 1)


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


def jitter(x: torch.Tensor, bright: torch.Tensor | None, contrast: torch.Tensor | None, sat: torch.Tensor | None,
           hue: torch.Tensor | None) -> torch.Tensor:
    """Apply per-image colour factors (None: that step off; factor 1 / hue 0: unchanged image)."""
    dev = x.device
    if bright is not None:
        x = _blend(x, torch.zeros_like(x), bright.to(dev))
    if contrast is not None:
        x = _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), contrast.to(dev))
    if sat is not None:
        x = _blend(x, _gray(x), sat.to(dev))
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
            x = _blur_where(x, apply, sigma, cfg)
        if getattr(cfg, "solarize", 0.0):
            x = solarize(x, torch.rand(b) < cfg.solarize, cfg.solarize_threshold)
        return normalize(x.clamp_(0, 1), self.mean, self.std)


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


def eval_view(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """open_clip's evaluation preprocessing for images already resized and centre-cropped to ``size`` at load
    time (see `mmssl.data.images`): scale to [0, 1] and normalise."""
    x = images.float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = TF.center_crop(TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), size)
    return normalize(x.clamp_(0, 1), mean, std)


# ---------------------------------------------------------------------------------------------------------
# two views for image self-supervised learning
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ViewParams(ImageViewsConfig):
    """One view's augmentation, fully resolved: `ImageViewsConfig` plus RandomSolarize."""

    solarize: Probability = 0.0
    solarize_threshold: Probability = 0.5  # on [0, 1] pixel values


@dataclass
class ViewOverrides:
    """Keys of a view that replace its preset's values; a key left unset (null) keeps the preset's value.
    Meanings as in `ImageViewsConfig` / `ViewParams`."""

    random_resized_crop: bool | None = None
    crop_scale: list[Annotated[float, Range(0, 1, open_low=True)]] | None = None
    crop_ratio: list[PositiveFloat] | None = None
    horizontal_flip: Probability | None = None
    color_jitter: Probability | None = None
    brightness: NonNegativeFloat | None = None
    contrast: NonNegativeFloat | None = None
    saturation: NonNegativeFloat | None = None
    hue: Annotated[float, Range(0, 0.5)] | None = None
    grayscale: Probability | None = None
    gaussian_blur: Probability | None = None
    blur_sigma: list[PositiveFloat] | None = None
    blur_kernel_size: PositiveInt | None = None
    solarize: Probability | None = None
    solarize_threshold: Probability | None = None

    def set_keys(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(ViewOverrides) if getattr(self, f.name) is not None}


Preset = Literal["simclr", "byol", "none"]
SMALL_IMAGE = 64  # presets leave Gaussian blur off at this image size and below


@dataclass
class TwoViewsConfig(ViewOverrides):
    """The two views of image SSL (``objective.views``): a preset, keys that override it for both views (set
    at this level), and keys for one view only (``view1``, ``view2``; they win over both-view keys).

    Presets (`preset_views`): ``simclr`` (Chen et al. 2020) both views alike; ``byol`` (Grill et al. 2020)
    asymmetric blur and solarize; ``none`` no augmentation. E.g. ``{preset: byol, view2: {solarize: 0.1}}``.
    """

    preset: Preset = "simclr"
    view1: ViewOverrides = field(default_factory=ViewOverrides)
    view2: ViewOverrides = field(default_factory=ViewOverrides)

    def __post_init__(self) -> None:
        self.resolve(224)  # a bad combination of keys fails when the recipe is read

    def resolve(self, size: int) -> tuple[ViewParams, ViewParams]:
        """The two views' parameters for images of `size` pixels: preset, then both-view keys, then per view."""
        both = self.set_keys()
        out = []
        for which, (preset, own) in enumerate(zip(preset_views(self.preset, size), (self.view1, self.view2)), 1):
            try:
                out.append(replace(preset, **{**both, **own.set_keys()}))
            except ValueError as exc:
                raise ValueError(f"view{which}: {exc}") from None
        return out[0], out[1]


def preset_views(name: Preset, size: int) -> tuple[ViewParams, ViewParams]:
    """The published augmentations of SimCLR and BYOL for images of `size` pixels.

    Both: random resized crop, scale (0.08, 1), ratio (3/4, 4/3); horizontal flip 0.5; colour jitter with
    probability 0.8; grayscale 0.2; Gaussian blur with sigma in (0.1, 2) and a kernel of 10% of the image
    side (odd). ``simclr``: jitter strengths 0.4/0.4/0.4/0.1 (brightness/contrast/saturation/hue, SimCLR's
    0.8·s, s=0.5), blur 0.5 on both views. ``byol``: 0.4/0.4/0.2/0.1; view 1 blur 1.0, solarize 0; view 2
    blur 0.1, solarize 0.2. Small images (``size <= SMALL_IMAGE``, e.g. CIFAR's 32 px or the world's) get
    no blur: a 3-pixel kernel with sigma up to 2 erases most of a 32-pixel image's detail, and SimCLR's
    CIFAR-10 setup and solo-learn's CIFAR recipes leave it out too. Set ``gaussian_blur`` to override.
    """
    if name == "none":
        plain = ViewParams(random_resized_crop=False)
        return plain, plain
    kernel = max(3, int(0.1 * size) | 1)
    blur = size > SMALL_IMAGE
    common = ViewParams(crop_scale=[0.08, 1.0], crop_ratio=[3 / 4, 4 / 3], horizontal_flip=0.5, color_jitter=0.8,
                        brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale=0.2,
                        blur_sigma=[0.1, 2.0], blur_kernel_size=kernel)
    if name == "simclr":
        view = replace(common, gaussian_blur=0.5 if blur else 0.0)
        return view, view
    if name == "byol":
        byol = replace(common, saturation=0.2)
        return (replace(byol, gaussian_blur=1.0 if blur else 0.0, solarize=0.0),
                replace(byol, gaussian_blur=0.1 if blur else 0.0, solarize=0.2))
    raise ValueError(f"unknown view preset {name!r}; choose 'simclr', 'byol' or 'none'")


# Counter-based randomness: splitmix64 on int64 tensors (multiplication wraps modulo 2**64, as unsigned
# arithmetic would; shifts are made logical by masking).
def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser of ``z + golden``, elementwise on an int64 tensor."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


# The draws of one view, by slot: crop area and aspect tries, crop position, then one per decision.
_TRIES = 10
_AREA, _ASPECT, _X, _Y = 0, _TRIES, 2 * _TRIES, 2 * _TRIES + 1
_FLIP, _JITTER, _BRIGHT, _CONTRAST, _SAT, _HUE, _GRAY, _BLUR, _SIGMA, _SOLARIZE = range(_Y + 1, _Y + 11)
_DRAWS = _Y + 11


def view_uniforms(rows: torch.Tensor, epoch: int, seed: int, view: int, draws: int = _DRAWS) -> torch.Tensor:
    """Uniform numbers in [0, 1), ``[B, draws]``: a pure function of (seed, epoch, row, view, draw)."""
    z = mix64(torch.full_like(rows, int(seed) & ((1 << 63) - 1), dtype=torch.long))
    z = mix64(z ^ int(epoch))
    z = mix64(z ^ rows.long())
    z = mix64(z ^ int(view))
    z = mix64(z.unsqueeze(1) ^ torch.arange(draws, device=rows.device))
    return _shr(z, 40).float() / float(1 << 24)  # top 24 bits: exact in float32


class TwoViews:
    """Callable: (uint8 ``[B, 3, H, W]``, row indices ``[B]``, epoch, seed) -> two augmented, normalised float
    views ``[B, 3, size, size]``. View ``v`` of row ``r`` is a function of (seed, epoch, r, v) only; it runs
    on the device of the images."""

    def __init__(self, cfg: TwoViewsConfig, size: int, mean, std):
        self.cfg, self.size, self.mean, self.std = cfg, size, tuple(mean), tuple(std)
        self.views = cfg.resolve(size)

    def __call__(self, images: torch.Tensor, rows: torch.Tensor, epoch: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(images, rows, epoch, seed, 0), self.view(images, rows, epoch, seed, 1)

    def view(self, images: torch.Tensor, rows: torch.Tensor, epoch: int, seed: int, which: int,
             stream: int | None = None) -> torch.Tensor:
        """View `which` (0 or 1: whose parameters) of a batch; `stream` (default `which`) names its random
        draws, so further views with the same parameters (e.g. SwAV's small crops) get their own."""
        cfg = self.views[which]
        b, _, h, w = images.shape
        u = view_uniforms(rows.to(images.device), epoch, seed, which if stream is None else stream)
        x = images.float().div_(255)
        if cfg.random_resized_crop:
            lo, hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
            area = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * u[:, _AREA:_AREA + _TRIES]
            aspect = torch.exp(lo + (hi - lo) * u[:, _ASPECT:_ASPECT + _TRIES])
            boxes = fit_boxes(h, w, area, aspect, u[:, _X], u[:, _Y], cfg.crop_ratio)
            x = resized_crop(x, boxes, self.size, per_image=True)
        elif (h, w) != (self.size, self.size):
            full = torch.tensor([[0.0, 0.0, w, h]], device=x.device).expand(b, 4)
            x = resized_crop(x, full, self.size, per_image=True)
        if cfg.horizontal_flip:
            x = torch.where((u[:, _FLIP] < cfg.horizontal_flip).view(-1, 1, 1, 1), x.flip(-1), x)
        if cfg.color_jitter:
            apply = u[:, _JITTER] < cfg.color_jitter

            def factor(slot: int, strength: float) -> torch.Tensor | None:
                if not strength:
                    return None
                low = max(0.0, 1 - strength)
                return torch.where(apply, low + (1 + strength - low) * u[:, slot], torch.ones_like(u[:, slot]))

            hue = torch.where(apply, cfg.hue * (2 * u[:, _HUE] - 1), torch.zeros_like(u[:, _HUE])) if cfg.hue else None
            x = jitter(x, factor(_BRIGHT, cfg.brightness), factor(_CONTRAST, cfg.contrast),
                       factor(_SAT, cfg.saturation), hue)
        if cfg.grayscale:
            x = torch.where((u[:, _GRAY] < cfg.grayscale).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        if cfg.gaussian_blur:
            sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[:, _SIGMA]
            x = _blur_where(x, u[:, _BLUR] < cfg.gaussian_blur, sigma, cfg)
        if cfg.solarize:
            x = solarize(x, u[:, _SOLARIZE] < cfg.solarize, cfg.solarize_threshold)
        return normalize(x.clamp_(0, 1), self.mean, self.std)

    def describe(self) -> dict[str, Any]:
        """The resolved parameters of both views (for logs, metrics and model cards)."""
        return {"preset": self.cfg.preset, "view1": asdict(self.views[0]), "view2": asdict(self.views[1])}
