"""Modality-agnostic views: image patch masking and DACL mixup (image SSL's counter-based `TwoViews` and CLIP's
`BatchImageViews`), the word-mask text view, and SimCLR / CLIP trained with them through the real trainer."""

from __future__ import annotations

import json

import pytest
import torch
from image_ssl_recipes import image_recipe, losses

from mmssl.data.image_views import (BatchImageViews, ImageViewsConfig, TwoViews, TwoViewsConfig, mixup, partners,
                                    patch_mask, preset_views)
from mmssl.data.text_views.config import ViewConfig
from mmssl.data.text_views.masking import WordMask, build_mask_view
from mmssl.data.text_views.views import TextViews, build_views
from mmssl.errors import RecipeError
from mmssl.recipes import parse_recipe
from mmssl.schema import from_dict
from mmssl.train.loop import train

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _batch(b: int = 8, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)


def _masked_cells(view: torch.Tensor, patch: int) -> torch.Tensor:
    """Per image, how many `patch` x `patch` cells are entirely zero (masked)."""
    b, _, h, w = view.shape
    zero = (view == 0).all(1).view(b, h // patch, patch, w // patch, patch)
    return zero.all(4).all(2).flatten(1).sum(1)


def test_patch_mask_masks_exactly_the_fraction_with_the_smallest_noise():
    noise = torch.rand(5, 16, generator=torch.Generator().manual_seed(0))
    mask = patch_mask(noise, 0.25, size=8, patch=2)
    assert mask.shape == (5, 1, 8, 8)
    cells = mask[:, 0, ::2, ::2].flatten(1)
    assert cells.sum(1).tolist() == [4] * 5  # round(0.25 * 16) cells each
    for i in range(5):  # the naive reference: the four smallest noise values are the masked cells
        assert set(cells[i].nonzero().flatten().tolist()) == set(noise[i].topk(4, largest=False).indices.tolist())
    assert torch.equal(mask, mask[:, :, ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3))  # whole cells
    cut = patch_mask(torch.rand(2, 9), 0.5, size=7, patch=3)  # a grid that overhangs the image: cells cut off
    assert cut.shape == (2, 1, 7, 7)


def test_generic_preset_masks_half_the_patches_with_the_mean_and_keeps_the_rest():
    x = _batch(b=8, size=16)
    views = TwoViews(TwoViewsConfig(preset="generic"), 16, MEAN, STD)
    v1, v2 = views(x, torch.arange(8), epoch=0, seed=3)
    plain = (x.float() / 255 - 0.5) / 0.25  # no crop, flip or colour change
    assert _masked_cells(v1, 2).tolist() == [32] * 8  # default cell: 16 // 8 = 2 px; half of 64 cells
    kept = v1 != 0
    assert torch.allclose(v1[kept], plain[kept], atol=1e-5)
    assert float((v1 == 0).float().mean()) == pytest.approx(0.5)
    assert (v1 != v2).flatten(1).any(1).all()  # the two views mask other cells
    custom = TwoViews(TwoViewsConfig(preset="generic", mask_ratio=0.25, mask_patch=4), 16, MEAN, STD)
    assert _masked_cells(custom.view(x, torch.arange(8), 0, 3, 0), 4).tolist() == [4] * 8


def test_mask_and_mixup_depend_on_rows_not_on_batch_order():
    x = _batch(b=16, size=16)
    rows = torch.arange(100, 116)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    masked = TwoViews(TwoViewsConfig(preset="simclr", mask_ratio=0.3), 16, MEAN, STD)
    a1, a2 = masked(x, rows, epoch=1, seed=5)
    b1, b2 = masked(x[perm], rows[perm], epoch=1, seed=5)
    assert torch.equal(b1, a1[perm]) and torch.equal(b2, a2[perm])
    c1, _ = masked(x[3:4], rows[3:4], epoch=1, seed=5)  # alone in its batch: the same view (no mixup here)
    assert torch.equal(c1[0], a1[3])
    mixed = TwoViews(TwoViewsConfig(preset="generic", mixup=1.0), 16, MEAN, STD)
    m1, m2 = mixed(x, rows, epoch=1, seed=5)
    n1, n2 = mixed(x[perm], rows[perm], epoch=1, seed=5)  # same rows, other order: the same partners
    assert torch.equal(n1, m1[perm]) and torch.equal(n2, m2[perm])
    assert not torch.equal(mixed(x, rows, epoch=2, seed=5)[0], m1)


def test_partners_are_other_rows_of_the_batch_chosen_by_row_id():
    keys = torch.tensor([40, 10, 30, 20])
    offset = torch.tensor([0.0, 0.0, 0.99, 0.5])
    got = partners(keys, offset).tolist()
    # ranks by id: 10, 20, 30, 40; 40 (rank 3) +1 -> 10 (position 1); 10 (rank 0) +1 -> 20 (position 3);
    # 30 (rank 2) +3 -> 20 (position 3); 20 (rank 1) +2 -> 40 (position 0)
    assert got == [1, 3, 3, 0]
    many = partners(torch.arange(50), torch.rand(50, generator=torch.Generator().manual_seed(0)))
    assert not (many == torch.arange(50)).any()


def test_mixup_lambda_lies_in_alpha_to_one():
    """Black and white images, each other's only partner: a view's pixel is its lambda (or 1 - lambda)."""
    x = torch.stack([torch.zeros(3, 8, 8), torch.full((3, 8, 8), 255.0)]).to(torch.uint8)
    views = TwoViews(TwoViewsConfig(preset="none", mixup=1.0, mixup_alpha=0.8), 8, (0.0,) * 3, (1.0,) * 3)
    lams = []
    for epoch in range(150):
        v = views.view(x, torch.tensor([7, 9]), epoch=epoch, seed=0, which=0)
        assert torch.allclose(v[0], v[0, 0, 0, 0].expand_as(v[0]))  # one lambda per image
        lams += [1 - float(v[0, 0, 0, 0]), float(v[1, 0, 0, 0])]
    lams_t = torch.tensor(lams)
    assert lams_t.min() >= 0.8 - 1e-6 and lams_t.max() <= 1.0
    assert abs(float(lams_t.mean()) - 0.9) < 0.01 and lams_t.max() - lams_t.min() > 0.15  # ~U(0.8, 1)
    x_f = torch.rand(4, 3, 2, 2)
    ref = 0.9 * x_f + 0.1 * x_f[[1, 2, 3, 0]]  # the naive formula, lambda = alpha when the draw is 0
    got = mixup(x_f, torch.tensor([1, 2, 3, 0]), torch.ones(4, dtype=torch.bool), torch.zeros(4), 0.9)
    assert torch.allclose(got, ref)
    half = mixup(x_f, torch.tensor([1, 2, 3, 0]), torch.tensor([True, False, True, False]), torch.zeros(4), 0.9)
    assert torch.equal(half[1], x_f[1]) and torch.allclose(half[0], ref[0])


def test_mask_on_a_preset_leaves_its_pixels_and_the_presets_as_they_were():
    x = _batch(b=8, size=24)
    rows = torch.arange(8)
    plain = TwoViews(TwoViewsConfig(preset="simclr"), 16, MEAN, STD)(x, rows, epoch=0, seed=1)
    masked = TwoViews(TwoViewsConfig(preset="simclr", mask_ratio=0.5), 16, MEAN, STD)(x, rows, epoch=0, seed=1)
    for p, m in zip(plain, masked):
        kept = m != 0
        assert torch.equal(m[kept], p[kept]) and float(kept.float().mean()) < 0.6
    for name in ("simclr", "byol", "none"):  # the new keys default to off in every published preset
        assert all(v.mask_ratio == 0 and v.mixup == 0 for v in preset_views(name, 32))
    assert TwoViewsConfig(preset="generic").resolve(32)[0].random_resized_crop is False


def test_clip_views_mask_and_mix_on_top_of_their_draws():
    x = _batch(b=8, size=16)
    torch.manual_seed(0)
    plain = BatchImageViews(ImageViewsConfig(), 16, MEAN, STD)(x)
    torch.manual_seed(0)
    masked = BatchImageViews(ImageViewsConfig(mask_ratio=0.5, mask_patch=4), 16, MEAN, STD)(x)
    kept = masked != 0
    assert torch.equal(masked[kept], plain[kept])  # the crop draws come first and are unchanged
    assert _masked_cells(masked, 4).tolist() == [8] * 8
    torch.manual_seed(0)
    mixed = BatchImageViews(ImageViewsConfig(random_resized_crop=False, mixup=1.0), 16, MEAN, STD)(x)
    unmixed = (x.float() / 255 - 0.5) / 0.25
    assert (mixed != unmixed).flatten(1).any(1).all()
    spread = float(unmixed.max() - unmixed.min())  # (1 - lambda) <= 0.1 of a difference of two images
    assert float((mixed - unmixed).abs().max()) <= 0.1 * spread + 1e-5


def test_bad_generic_keys_are_recipe_errors():
    with pytest.raises(RecipeError, match=r"objective.views.mask_ratio: 1.0 is out of range"):
        from_dict(TwoViewsConfig, {"preset": "generic", "mask_ratio": 1.0}, "objective.views")
    with pytest.raises(RecipeError, match=r"objective.views.mixup_alpha"):
        from_dict(ImageViewsConfig, {"mixup": 1.0, "mixup_alpha": 1.5}, "objective.views")
    with pytest.raises(RecipeError, match="generic"):
        from_dict(TwoViewsConfig, {"preset": "generc"}, "objective.views")


def test_word_mask_masks_a_fraction_of_words_per_index():
    text = " ".join(f"w{i}" for i in range(20))
    view = WordMask(name="mask", seed=0, p=0.25, mask_token="[MASK]")
    out = view([text] * 3, [0, 0, 1])
    assert out[0] == out[1] != out[2]  # the index decides, not the position in the batch
    assert all(o.split().count("[MASK]") == 5 and len(o.split()) == 20 for o in out)
    kept = [w for w in out[0].split() if w != "[MASK]"]
    assert kept == [w for w in text.split() if w in kept]  # the other words, in order
    assert view([text, "alone"], [5, 0])[0] == view([text], [5])[0]  # whatever else is in the batch
    dropped = build_mask_view(ViewConfig(type="mask", p=0.25), name="mask", seed=0)([text], [0])[0]
    assert len(dropped.split()) == 15 and "[MASK]" not in dropped
    assert view(["alone"], [0]) == [None]  # a one-word text keeps its word: the caller keeps the text
    assert WordMask(p=1.0).count(4) == 3 and WordMask(p=0.01).count(4) == 1
    (built,) = build_views(ViewConfig(type="mask", p=0.5, mask_token="<m>", name="m"), seed=2)
    assert built.describe()["mask_token"] == "<m>" and built([text], [0])[0].split().count("<m>") == 10
    on_the_fly = TextViews([{"type": "mask", "p": 0.2}], seed=0)([text, text], [3, 4], epoch=1)
    assert all(len(o.split()) == 16 for o in on_the_fly) and on_the_fly[0] != on_the_fly[1]


@pytest.mark.slow
def test_simclr_with_the_generic_view_learns_through_the_trainer(tmp_path):
    """SimCLR whose only views are masked patches (a quarter) and DACL mixup: trains, evaluates and exports; the
    loss falls (0.27 nats below the first log at seed 0, asserted with margin)."""
    out = tmp_path / "run"
    raw = image_recipe(out, "simclr", temperature=0.5, views={"preset": "generic", "mask_ratio": 0.25,
                                                                "mixup": 1.0}, eval_max_images=40)
    raw["train"].update(max_steps=30, log_every=5, eval_every=30)
    train(parse_recipe(raw))
    values = losses(out)
    assert sum(values[-2:]) / 2 < values[0] - 0.12, values
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["knn_top1"] > 0 and (out / "model.safetensors").is_file()
    saved = (out / "recipe.yaml").read_text()
    assert "preset: generic" in saved and "mask_ratio: 0.25" in saved


@pytest.mark.slow
def test_clip_with_the_mask_view_trains(tmp_path):
    """CLIP with masked patches as its image view (no crop): the loss falls (0.5 nats in 24 steps at seed 0)."""
    out = tmp_path / "clip"
    tiny = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 32, "layers": 1,
                                            "head_width": 16},
            "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 24}}
    raw = {"name": "test-clip-mask", "output_dir": str(out), "seed": 0,
           "data": {"source": "world", "world": {"num_scenes": 200, "num_colours": 2, "num_shapes": 2}},
           "model": {"arch": "mmssl-vit-tiny", "config": tiny},
           "objective": {"name": "clip", "views": {"random_resized_crop": False, "mask_ratio": 0.5, "mask_patch": 4}},
           "train": {"batch_size": 32, "learning_rate": 3e-3, "max_steps": 24, "log_every": 4, "progress": False,
                     "cpu": True, "scheduler": "constant", "eval_every": 24}}
    train(parse_recipe(raw))
    values = losses(out)
    assert sum(values[-2:]) / 2 < values[0] - 0.2, values
    assert "mask_ratio: 0.5" in (out / "recipe.yaml").read_text()
