"""Batched uint8 image views: geometry, per-image randomness, seeding, open_clip-equal evaluation views, and
the deterministic two-view pipeline of image SSL (presets, overrides, probabilities, determinism)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmssl.data.image_views import (BatchImageViews, ImageViewsConfig, TwoViews, TwoViewsConfig, ViewOverrides,
                                    ViewParams, adjust_hue, eval_view, gaussian_blur, mix64, preset_views,
                                    view_uniforms)
from mmssl.data.image_views.pipelines import _crop_boxes
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


def test_batched_hue_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x = _batch(b=9, size=7).float() / 255
    x[0] = 0.5  # gray: no hue
    shift = torch.linspace(-0.5, 0.5, 9)
    ours = adjust_hue(x, shift)
    for i in range(9):
        assert torch.allclose(ours[i], TF.adjust_hue(x[i], float(shift[i])), atol=2e-6)


def test_clip_views_can_solarize():
    x = _batch(b=4)
    out = BatchImageViews(ViewParams(random_resized_crop=False, solarize=1.0), 16, MEAN, STD)(x)
    f = x.float() / 255
    assert torch.allclose(out, torch.where(f >= 0.5, 1 - f, f))


def test_counter_hash_is_splitmix64_and_uniform():
    def reference(x: int) -> int:
        m = (1 << 64) - 1
        z = (x + 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    xs = [0, 1, 12345, 2**40 + 7, 2**62 + 3]
    assert [int(v) % 2**64 for v in mix64(torch.tensor(xs))] == [reference(x) for x in xs]
    u = view_uniforms(torch.arange(2000), epoch=0, seed=0, view=0)
    assert u.shape == (2000, 32) and u.min() >= 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - 12 ** -0.5) < 0.01


def test_two_views_depend_only_on_seed_epoch_row_and_view():
    x = _batch(b=64, size=48)
    rows = torch.arange(500, 564)
    views = TwoViews(TwoViewsConfig(preset="byol", gaussian_blur=0.5), 16, (0.5,) * 3, (0.25,) * 3)
    a1, a2 = views(x, rows, epoch=2, seed=7)
    assert a1.shape == a2.shape == (64, 3, 16, 16)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:20]
    b1, b2 = views(x[perm], rows[perm], epoch=2, seed=7)  # another batch: other rows, other order
    assert torch.equal(b1, a1[perm]) and torch.equal(b2, a2[perm])
    torch.manual_seed(123)  # the global RNG plays no part
    for i in range(12):  # each row alone (small crops included: their sampling must not follow the batch's)
        c1, c2 = views(x[i : i + 1], rows[i : i + 1], epoch=2, seed=7)
        assert torch.equal(c1[0], a1[i]) and torch.equal(c2[0], a2[i])
    differs = lambda p, q: (p != q).flatten(1).any(1).float().mean()  # noqa: E731
    assert differs(views(x, rows, epoch=3, seed=7)[0], a1) > 0.95  # a new epoch: new views
    assert differs(views(x, rows, epoch=2, seed=8)[0], a1) > 0.95  # another seed: new views
    assert differs(a1, a2) > 0.95  # the two views of a row differ
    same_row = views(x[:1].expand(8, -1, -1, -1), torch.arange(8), epoch=2, seed=7)[0]
    assert differs(same_row[1:], same_row[:1].expand(7, -1, -1, -1)) == 1  # the row index decides, not the pixels


def _count(views: TwoViews, x: torch.Tensor, which: int, test) -> float:
    out = views.view(x, torch.arange(x.shape[0]), epoch=0, seed=0, which=which)
    return float(test(out, x.float() / 255).float().mean())


def test_probabilities_of_solarize_blur_flip_and_grayscale():
    """Each operation alone on random noise, where its effect on one image is unmistakable."""
    n = 400
    x = _batch(b=n, size=12)
    cfg = TwoViewsConfig(preset="none", view1=ViewOverrides(solarize=0.2, gaussian_blur=0.0),
                         view2=ViewOverrides(solarize=0.0, gaussian_blur=0.5, blur_sigma=[1.0, 2.0]))
    views = TwoViews(cfg, 12, MEAN, STD)
    solarized = lambda out, f: (out == torch.where(f >= 0.5, 1 - f, f)).flatten(1).all(1)  # noqa: E731
    blurred = lambda out, f: (out[..., 1:] - out[..., :-1]).abs().flatten(1).mean(1) < 0.1  # noqa: E731 - noise: ~0.33
    tol = 4 * (0.25 / n) ** 0.5
    assert abs(_count(views, x, 0, solarized) - 0.2) < tol and _count(views, x, 1, solarized) == 0
    assert _count(views, x, 0, blurred) == 0 and abs(_count(views, x, 1, blurred) - 0.5) < tol
    views = TwoViews(TwoViewsConfig(preset="none", horizontal_flip=0.5, view2=ViewOverrides(grayscale=0.2)), 12, MEAN, STD)
    flipped = lambda out, f: (out == f.flip(-1)).flatten(1).all(1)  # noqa: E731
    gray = lambda out, f: (out[:, 0] == out[:, 1]).flatten(1).all(1)  # noqa: E731
    assert abs(_count(views, x, 0, flipped) - 0.5) < tol and _count(views, x, 0, gray) == 0
    assert abs(_count(views, x, 1, gray) - 0.2) < tol


def test_presets_follow_the_papers_and_blur_is_off_for_small_images():
    s1, s2 = preset_views("simclr", 224)
    assert s1 == s2 and s1.crop_scale == [0.08, 1.0] and s1.horizontal_flip == 0.5 and s1.color_jitter == 0.8
    assert (s1.brightness, s1.contrast, s1.saturation, s1.hue, s1.grayscale) == (0.4, 0.4, 0.4, 0.1, 0.2)
    assert s1.gaussian_blur == 0.5 and s1.blur_kernel_size == 23 and s1.solarize == 0
    b1, b2 = preset_views("byol", 224)
    assert (b1.saturation, b1.gaussian_blur, b1.solarize, b2.gaussian_blur, b2.solarize) == (0.2, 1.0, 0.0, 0.1, 0.2)
    small1, small2 = preset_views("byol", 32)
    assert small1.gaussian_blur == small2.gaussian_blur == 0 and small2.solarize == 0.2
    assert preset_views("simclr", 64)[0].gaussian_blur == 0 and preset_views("simclr", 96)[0].blur_kernel_size == 9


def test_two_view_config_overrides_and_errors():
    cfg = from_dict(TwoViewsConfig, {"preset": "byol", "gaussian_blur": 0.3, "view2": {"gaussian_blur": 0.0,
                                                                                        "solarize": 0.5}}, "objective.views")
    v1, v2 = cfg.resolve(96)
    assert (v1.gaussian_blur, v1.solarize, v2.gaussian_blur, v2.solarize) == (0.3, 0.0, 0.0, 0.5)
    assert v1.saturation == v2.saturation == 0.2  # untouched keys keep the preset's values
    with pytest.raises(RecipeError, match=r"objective.views.view1.solarize: 2.0 is out of range"):
        from_dict(TwoViewsConfig, {"view1": {"solarize": 2.0}}, "objective.views")
    with pytest.raises(RecipeError, match="view2: .*crop_scale"):
        from_dict(TwoViewsConfig, {"view2": {"crop_scale": [0.9, 0.2]}}, "objective.views")
    with pytest.raises(RecipeError, match="preset"):
        from_dict(TwoViewsConfig, {"preset": "simclrr"}, "objective.views")
