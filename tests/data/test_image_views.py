"""Batched uint8 image views: geometry, per-image randomness, seeding, and open_clip-equal evaluation views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmssl.data.image_views import BatchImageViews, ImageViewsConfig, _crop_boxes, eval_view, gaussian_blur
from mmssl.errors import RecipeError
from mmssl.schema import from_dict

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _batch(b=6, size=16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)


def test_identity_views_equal_eval_view():
    x = _batch()
    cfg = ImageViewsConfig(random_resized_crop=False)
    out = BatchImageViews(cfg, 16, MEAN, STD)(x)
    assert torch.allclose(out, x.float() / 255, atol=1e-6)
    assert torch.allclose(eval_view(x, 16, (0.5,) * 3, (0.25,) * 3), (x.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_full_crop_is_identity_and_crops_differ_per_image():
    x = _batch()
    full = ImageViewsConfig(crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0])
    assert torch.allclose(BatchImageViews(full, 16, MEAN, STD)(x), x.float() / 255, atol=1e-5)
    same = x[:1].expand(8, -1, -1, -1).contiguous()
    torch.manual_seed(1)
    views = BatchImageViews(ImageViewsConfig(crop_scale=[0.3, 0.6]), 12, MEAN, STD)(same)
    assert views.shape == (8, 3, 12, 12)
    assert len({tuple(v.flatten()[:20].tolist()) for v in views}) == 8  # independent crop per image


def test_crop_boxes_follow_scale_and_stay_inside():
    torch.manual_seed(0)
    boxes = _crop_boxes(500, 40, 30, [0.2, 0.5], [0.75, 4 / 3])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / (40 * 30)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 30).all() and (boxes[:, 3] <= 40).all()
    assert area.min() > 0.17 and area.max() < 0.53
    assert ((w / h) > 0.75 * 0.9).all() and ((w / h) < 4 / 3 * 1.1).all()  # rounding to whole pixels


def test_views_are_seeded_by_the_global_rng():
    x = _batch()
    cfg = ImageViewsConfig(horizontal_flip=0.5, color_jitter=0.8, grayscale=0.2, gaussian_blur=0.5)
    views = BatchImageViews(cfg, 12, MEAN, STD)
    torch.manual_seed(3)
    a = views(x)
    torch.manual_seed(3)
    b = views(x)
    torch.manual_seed(4)
    c = views(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_flip_and_grayscale_probabilities():
    x = _batch(b=64)
    cfg = ImageViewsConfig(random_resized_crop=False, horizontal_flip=1.0)
    assert torch.allclose(BatchImageViews(cfg, 16, MEAN, STD)(x), x.flip(-1).float() / 255)
    gray = BatchImageViews(ImageViewsConfig(random_resized_crop=False, grayscale=1.0), 16, MEAN, STD)(x)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    none = BatchImageViews(ImageViewsConfig(random_resized_crop=False, grayscale=0.0), 16, MEAN, STD)(x)
    assert not torch.allclose(none[:, 0], none[:, 1])


def test_color_jitter_matches_torchvision_formulas():
    from torchvision.transforms.v2 import functional as TF

    from mmssl.data.image_views import color_jitter

    x = _batch(b=2).float() / 255
    cfg = ImageViewsConfig(brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    torch.manual_seed(0)
    factors = torch.empty(2).uniform_(0.5, 1.5)
    torch.manual_seed(0)
    out = color_jitter(x, cfg, torch.tensor([True, False]))
    assert torch.allclose(out[0], TF.adjust_brightness(x[0], float(factors[0])), atol=1e-6)
    assert torch.allclose(out[1], x[1])
    cfg = ImageViewsConfig(brightness=0.0, contrast=0.0, saturation=0.5, hue=0.0)
    torch.manual_seed(0)
    factors = torch.empty(2).uniform_(0.5, 1.5)
    torch.manual_seed(0)
    out = color_jitter(x, cfg, torch.tensor([True, True]))
    assert torch.allclose(out[1], TF.adjust_saturation(x[1], float(factors[1])), atol=1e-5)


def test_blur_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x = _batch(b=2).float() / 255
    ours = gaussian_blur(x, torch.tensor([0.8, 1.5]), 5)
    for i, s in enumerate((0.8, 1.5)):
        assert torch.allclose(ours[i], TF.gaussian_blur(x[i], [5, 5], [s, s]), atol=1e-5)


def test_eval_view_resizes_like_open_clip():
    from open_clip.transform import image_transform

    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    x = torch.from_numpy(array).permute(2, 0, 1)[None]
    ours = eval_view(x, 20, MEAN, STD)[0]
    ref = image_transform(20, is_train=False, mean=MEAN, std=STD)(Image.fromarray(array))
    assert torch.allclose(ours, ref, atol=1e-6)


def test_bad_view_settings_are_recipe_errors():
    with pytest.raises(RecipeError, match="horizontal_flip"):
        from_dict(ImageViewsConfig, {"horizontal_flip": 1.5}, "objective.views")
    with pytest.raises(RecipeError, match="crop_scale"):
        from_dict(ImageViewsConfig, {"crop_scale": [0.9, 0.2]}, "objective.views")
