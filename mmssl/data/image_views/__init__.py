"""Random image views for contrastive and self-supervised training, computed on a whole uint8 batch at once.

The transforms follow torchvision's ``transforms.v2`` definitions (RandomResizedCrop, RandomHorizontalFlip,
ColorJitter, RandomGrayscale, GaussianBlur, RandomSolarize) with independent random parameters per image, run as
a few batched tensor operations instead of a Python loop per image.

* `config`: the recipe keys (``objective.views``) and the SimCLR/BYOL presets;
* `kernels`: the batched tensor operations (crop, jitter, hue, blur, solarize, normalise);
* `generic`: modality-agnostic views, patch masking and DACL mixup (keys ``mask_ratio``, ``mixup``; preset
  ``generic``);
* `rng`: counter-based random numbers, a pure function of (seed, epoch, row, view, draw);
* `pipelines`: `BatchImageViews` (CLIP), `TwoViews` (image SSL) and `eval_view` (open_clip's evaluation view).
"""

from mmssl.data.image_views.config import (GENERIC_MASK_RATIO, SMALL_IMAGE, ImageViewsConfig, Preset,
                                           TwoViewsConfig, ViewOverrides, ViewParams, preset_views)
from mmssl.data.image_views.generic import mixup, partners, patch_mask, patch_side
from mmssl.data.image_views.kernels import (adjust_hue, fit_boxes, gaussian_blur, jitter, normalize, resized_crop,
                                            rgb_to_gray, solarize)
from mmssl.data.image_views.pipelines import BatchImageViews, TwoViews, color_jitter, eval_view
from mmssl.data.image_views.rng import ViewDraws, mix64, view_uniforms

__all__ = ["GENERIC_MASK_RATIO", "SMALL_IMAGE", "BatchImageViews", "ImageViewsConfig", "Preset", "TwoViews",
           "TwoViewsConfig", "ViewDraws", "ViewOverrides", "ViewParams", "adjust_hue", "color_jitter", "eval_view",
           "fit_boxes", "gaussian_blur", "jitter", "mix64", "mixup", "normalize", "partners", "patch_mask",
           "patch_side", "preset_views", "resized_crop", "rgb_to_gray", "solarize", "view_uniforms"]
