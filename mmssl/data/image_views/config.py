"""The recipe keys of image views (``objective.views``): `ImageViewsConfig` (CLIP), `TwoViewsConfig` (image
SSL: a preset plus overrides) and the SimCLR/BYOL presets (`preset_views`) they resolve to."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, Literal

from mmssl.schema import NonNegativeFloat, PositiveFloat, PositiveInt, Probability, Range


@dataclass
class ImageViewsConfig:
    """Per-recipe training augmentation (``objective.views``). Probabilities are per image.

    Defaults are open_clip's training views (a mild random-resized crop); flips, colour changes and blur
    are opt-in because they can contradict captions ("on the left", "a red ...").

    Modality-agnostic views (no image prior), applied last, on top of the others: ``mask_ratio`` (that
    fraction of the view's ``mask_patch`` x ``mask_patch`` patches set to the mean pixel, zero after
    normalisation: masking as a view, as SimCSE's dropout masks tokens) and ``mixup`` (with that probability
    the view becomes ``lam * x + (1 - lam) * x_other``, ``lam ~ U(mixup_alpha, 1)``, ``x_other`` another
    image of the batch: DACL, Verma et al. 2021). Mixup is applied before masking.
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
    mask_ratio: Annotated[float, Range(0, 1, open_high=True)] = 0.0  # fraction of patches set to the mean pixel
    mask_patch: PositiveInt | None = None  # masked patches' side in px of the view; None: image_size // 8
    mixup: Probability = 0.0  # probability of DACL mixup with another image of the batch
    mixup_alpha: Probability = 0.9  # mixup's weight of the image itself, lambda ~ U(mixup_alpha, 1)

    def __post_init__(self) -> None:
        for name, pair, low in (("crop_scale", self.crop_scale, 0.0), ("crop_ratio", self.crop_ratio, 0.0),
                                ("blur_sigma", self.blur_sigma, 0.0)):
            if len(pair) != 2 or not low < pair[0] <= pair[1]:
                raise ValueError(f"objective.views.{name} must be [min, max] with 0 < min <= max")
        if self.blur_kernel_size is not None and self.blur_kernel_size % 2 == 0:
            raise ValueError("objective.views.blur_kernel_size must be a positive odd number")


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
    mask_ratio: Annotated[float, Range(0, 1, open_high=True)] | None = None
    mask_patch: PositiveInt | None = None
    mixup: Probability | None = None
    mixup_alpha: Probability | None = None

    def set_keys(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(ViewOverrides) if getattr(self, f.name) is not None}


Preset = Literal["simclr", "byol", "none", "generic"]
GENERIC_MASK_RATIO = 0.5  # the ``generic`` preset's fraction of masked patches
SMALL_IMAGE = 64  # presets leave Gaussian blur off at this image size and below


@dataclass
class TwoViewsConfig(ViewOverrides):
    """The two views of image SSL (``objective.views``): a preset, keys that override it for both views (set
    at this level), and keys for one view only (``view1``, ``view2``; they win over both-view keys).

    Presets (`preset_views`): ``simclr`` (Chen et al. 2020) both views alike; ``byol`` (Grill et al. 2020)
    asymmetric blur and solarize; ``none`` no augmentation; ``generic`` no image-specific augmentation, only
    a random half of the patches masked (modality-agnostic; add ``mixup: 1.0`` for DACL mixup). E.g.
    ``{preset: byol, view2: {solarize: 0.1}}``, ``{preset: generic, mixup: 1.0}`` or a mask on a preset,
    ``{preset: simclr, mask_ratio: 0.25}``.
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
    ``generic``: no crop, flip or colour change; ``GENERIC_MASK_RATIO`` of the patches masked per view.
    """
    if name == "none":
        plain = ViewParams(random_resized_crop=False)
        return plain, plain
    if name == "generic":  # masking as a view: no crop, flip or colour change (`GENERIC_MASK_RATIO`)
        masked = ViewParams(random_resized_crop=False, mask_ratio=GENERIC_MASK_RATIO)
        return masked, masked
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
    raise ValueError(f"unknown view preset {name!r}; choose 'simclr', 'byol', 'none' or 'generic'")
