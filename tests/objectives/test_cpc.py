"""CPC for images: the patch grid, the loss of each offset against a naive loop over positions, a context that
cannot see the rows it predicts, recipe refusals, a tiny run through the real trainer (loss down, evaluated on
whole images and on the patch grid, exported as a timm backbone) and a stopped streamed run that resumes to the
same weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
from image_ssl_recipes import image_recipe, losses

from mmssl.errors import RecipeError
from mmssl.losses.cpc import extract_patches, grid_size, offset_loss
from mmssl.models.vision import build_backbone, load_backbone
from mmssl.objectives.cpc import CPCModule
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective
from mmssl.train.loop import train

CPC_TINY = {"patch_size": 4, "patch_stride": 2, "prediction_steps": 2, "context_layers": 1}  # 16 px: a 7x7 grid


def test_patches_are_the_overlapping_grid_cells():
    images = torch.randn(2, 3, 12, 12)
    patches = extract_patches(images, 4, 2)
    assert grid_size(12, 4, 2) == 5 and patches.shape == (2, 5, 5, 3, 4, 4)
    for r in range(5):
        for c in range(5):
            assert torch.equal(patches[:, r, c], images[:, :, 2 * r:2 * r + 4, 2 * c:2 * c + 4])


def naive_offset_loss(pred, z, k, temperature, normalize) -> float:
    """For each query (b, r, c) with r + k inside the grid: -log softmax over every patch of the batch of the
    scores pred[b, r, c] . z[b', r', c'] / T, at the patch (b, r + k, c); the mean over queries."""
    b, g, _, _ = z.shape
    if normalize:
        pred, z = torch.nn.functional.normalize(pred, dim=-1), torch.nn.functional.normalize(z, dim=-1)
    total, count = 0.0, 0
    for i in range(b):
        for r in range(g - k):
            for c in range(g):
                scores = {(j, rr, cc): float(pred[i, r, c] @ z[j, rr, cc]) / temperature
                          for j in range(b) for rr in range(g) for cc in range(g)}
                top = max(scores.values())
                log_sum = top + math.log(sum(math.exp(s - top) for s in scores.values()))
                total += log_sum - scores[(i, r + k, c)]
                count += 1
    return total / count


def test_offset_loss_matches_a_naive_loop_over_positions():
    g = torch.Generator().manual_seed(0)
    pred, z = torch.randn(2, 4, 4, 5, generator=g), torch.randn(2, 4, 4, 5, generator=g)
    for k in (1, 3):
        for temperature, normalize in ((1.0, False), (0.1, True)):
            got = float(offset_loss(pred, z, k, temperature, normalize))
            assert got == pytest.approx(naive_offset_loss(pred, z, k, temperature, normalize), rel=1e-5)
    with pytest.raises(ValueError, match="offset 4"):
        offset_loss(pred, z, 4)


def test_the_context_at_a_row_cannot_see_the_rows_below():
    torch.manual_seed(0)
    backbone = build_backbone(parse_recipe(image_recipe("unused", "cpc")).model)
    module = CPCModule(backbone, width=16, layers=3, steps=2, patch_size=4, stride=2).eval()
    z = torch.randn(2, backbone.dim, 6, 6)
    context = module.context(z)
    for row in range(5):
        changed = z.clone()
        changed[:, :, row + 1:] = torch.randn_like(changed[:, :, row + 1:])
        after = module.context(changed)
        assert torch.equal(after[:, :, :row + 1], context[:, :, :row + 1])  # rows at and above: untouched
        assert not torch.allclose(after[:, :, row + 1], context[:, :, row + 1])  # the row below does change
    own = z.clone()
    own[:, :, 2, 0] += 1.0  # a patch of row 2 reaches the context of row 2 (and its neighbouring columns)
    assert not torch.allclose(module.context(own)[:, :, 2, :2], context[:, :, 2, :2])
    # predictions are per-position linear maps of the context: they inherit its causality
    assert len(module.predictors) == 2 and module.predictors[0].out_features == backbone.dim


@pytest.mark.parametrize(("keys", "needle"), [
    ({"patch_stride": 5}, r"objective\.patch_stride=5 does not tile"),
    ({"patch_size": 32}, r"objective\.patch_size=32 is larger"),
    ({"prediction_steps": 7}, r"objective\.prediction_steps=7: the 7x7 patch grid"),
])
def test_a_grid_that_does_not_fit_is_refused_by_name(tmp_path, keys, needle):
    recipe = parse_recipe(image_recipe(tmp_path / "run", "cpc", **{**CPC_TINY, **keys}))
    with pytest.raises(RecipeError, match=needle):
        get_objective("cpc")(recipe).check(1)


@pytest.mark.slow
def test_trains_evaluates_on_images_and_patches_and_exports(tmp_path):
    out = tmp_path / "run"
    raw = image_recipe(out, "cpc", **CPC_TINY, hidden_dim=32)
    raw["train"].update(max_steps=20, log_every=2, learning_rate=1e-2)
    metrics = train(parse_recipe(raw))
    logged = losses(out)
    # fixed seed: chance is ln(16 images x 49 patches) = 6.66; the loss falls well below where it started
    assert sum(logged[-3:]) / 3 < logged[0] - 0.5, logged
    result = metrics["eval"]
    for key in ("knn_top1", "patch_knn_top1", "patch_linear_probe_top1", "random_init_patch_knn_top1"):
        assert 0 <= result[key] <= 1, key
    assert result["collapsed"] == 0 and math.isfinite(result["random_init_knn_top1"])
    backbone = load_backbone(str(out))  # the exported encoder: the timm backbone, no context network
    assert backbone(torch.zeros(2, 3, 16, 16)).shape == (2, backbone.dim)
    meta = json.loads((out / "mmssl_image_eval.json").read_text())
    assert meta["random_init_patch_knn_top1"] == result["random_init_patch_knn_top1"]


@pytest.mark.slow
def test_a_stopped_streamed_run_resumes_to_the_same_weights(tmp_path):
    """CPC on a stream of WebDataset shards (it needs no row of the training set), stopped after a checkpoint and
    resumed: the same weights as an unbroken run."""
    from clirun import straight_and_resumed_here

    from mmssl.config import DataConfig, WorldConfig
    from mmssl.prepare import prepare

    shards = tmp_path / "shards"
    data = DataConfig(source="world", world=WorldConfig(num_scenes=160, image_size=32, pair_fraction=0.0))
    assert prepare(data, str(shards), "images", shard_size=80)["shards"] == 2
    raw = image_recipe(tmp_path / "unused", "cpc", **CPC_TINY, hidden_dim=16, eval_before=False, linear_probe=False,
                       patch_eval=False)
    raw["data"] = {"source": "files", "path": str(shards / "shard-{00000..00001}-0000.tar"), "streaming": True,
                   "shuffle_buffer": 0}
    raw["train"].update(max_steps=10, save_every=4, keep_checkpoints=10, num_workers=0)
    a, b, _ = straight_and_resumed_here(raw, tmp_path, 4, 10)
    assert a.keys() == b.keys() and any("context" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert json.loads((tmp_path / "broken" / "metrics.json").read_text())["train_images"] == "streamed"
