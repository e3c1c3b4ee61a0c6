"""MAE: patchify reads patches in the ViT's order and the loss counts masked patches only; the encoder sees only
the visible quarter and the run exports a plain timm ViT; the position embeddings are the paper's fixed sine-cosine
table; a backbone that is not a ViT is a clear error."""

from __future__ import annotations

import math

import pytest
import torch
from image_ssl_recipes import image_objective, image_recipe

from mmssl.errors import RecipeError
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective
from mmssl.train.loop import train


MAE_MODEL = {"arch": "vit_tiny_patch16_224", "config": {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32,
                                                        "num_heads": 2}}


def test_patchify_reads_patches_in_the_vits_order_and_the_loss_counts_masked_patches_only():
    from mmssl.losses.reconstruction import masked_patch_loss, patchify

    images = torch.rand(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches[1, 4].view(4, 4, 3), images[1, :, 4:8, 4:8].permute(1, 2, 0))  # row 1, column 1
    target, mask = torch.rand(2, 6, 48), torch.tensor([[1.0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 1, 1]])
    prediction = torch.rand(2, 6, 48)
    base = masked_patch_loss(prediction, target, mask)
    changed = prediction.clone()
    changed[mask == 0] += 5.0  # visible patches: no effect
    assert torch.equal(masked_patch_loss(changed, target, mask), base)
    changed[0, 0] += 1.0  # a masked patch: an effect
    assert masked_patch_loss(changed, target, mask) != base
    plain = ((prediction - target).pow(2).mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(masked_patch_loss(prediction, target, mask, norm_pix=False), plain)


@pytest.mark.slow
def test_mae_encoder_sees_only_the_visible_quarter_and_exports_a_plain_timm_vit(tmp_path):
    import timm

    raw = image_recipe(tmp_path / "run", "mae", decoder_dim=16, decoder_depth=1, decoder_heads=2)
    raw["model"] = dict(MAE_MODEL)
    recipe = parse_recipe(raw)
    obj = get_objective("mae")(recipe)
    obj.setup()
    module = obj.module.train()
    seen = []
    module.backbone.model.blocks.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    batch = obj.prepare_batch({"index": torch.arange(4)})
    out = obj.step_loss(module, batch)
    assert seen == [(4, 1 + 4, 32)]  # 16 patches, 75% masked: the class token and 4 patches
    assert math.isfinite(float(out["loss"].detach()))
    metrics = train(parse_recipe(raw))
    assert 0 <= metrics["eval"]["knn_top1"] <= 1 and math.isfinite(metrics["eval"]["linear_probe_top1"])
    vit = timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True, num_classes=0)
    with torch.no_grad():
        assert vit(torch.rand(2, 3, 16, 16)).shape == (2, 32)


def test_mae_position_embeddings_are_the_papers_fixed_sine_cosine_table(tmp_path):
    """Against the MAE code's numpy formula (a meshgrid of (column, row), 1-D tables of sin | cos per axis); the
    encoder's and decoder's tables are fixed, the encoder's linear layers re-initialised."""
    import numpy as np

    from mmssl.objectives.mae import sincos_position_embedding

    def table_1d(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    def table_2d(dim, rows, cols):
        grid = np.stack(np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32)))
        patches = np.concatenate([table_1d(dim // 2, grid[0]), table_1d(dim // 2, grid[1])], axis=1)
        return np.concatenate([np.zeros([1, dim]), patches])  # the class token's row

    for rows, cols in [(4, 4), (3, 5)]:
        ours = sincos_position_embedding(32, (rows, cols), 1)[0].numpy()
        assert np.abs(ours - table_2d(32, rows, cols)).max() < 1e-6
    raw = image_recipe(tmp_path / "run", "mae", decoder_dim=16, decoder_depth=1, decoder_heads=2)
    raw["model"] = dict(MAE_MODEL)
    obj = get_objective("mae")(parse_recipe(raw))
    obj.setup()
    vit = obj.module.backbone.model
    assert not vit.pos_embed.requires_grad and not obj.module.decoder_pos.requires_grad
    assert torch.equal(vit.pos_embed, sincos_position_embedding(32, (4, 4), 1))
    assert torch.equal(obj.module.decoder_pos, sincos_position_embedding(16, (4, 4), 1))
    assert all(float(block.attn.qkv.bias.abs().max()) == 0 for block in vit.blocks)  # Xavier init, zero biases


def test_mae_refuses_a_backbone_that_is_not_a_vit(tmp_path):
    with pytest.raises(RecipeError, match="needs a timm ViT backbone"):
        image_objective(tmp_path, "mae")
