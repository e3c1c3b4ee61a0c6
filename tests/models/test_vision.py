"""Image backbones from timm, torchvision and transformers: features of the right size, and a saved backbone
loads back, bit for bit, through its own library (timm local-dir, AutoModel) and through mmssl."""

from __future__ import annotations

import pytest
import timm
import torch

from mmssl.config import ModelConfig
from mmssl.errors import RecipeError
from mmssl.models.vision import build_backbone, load_backbone

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8}


@pytest.mark.parametrize("arch, config, dim", [
    ("resnet18", {"channels": [16, 32, 64, 128]}, 128),
    ("resnet18", {"channels": [16, 32, 64, 128], "small_stem": True}, 128),
    ("resnet18", {"library": "torchvision"}, 512),
    ("vit", TINY_VIT, 32),
])
def test_backbones_embed_and_round_trip(tmp_path, arch, config, dim):
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(arch=arch, config=config)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = backbone(images)
    assert features.shape == (2, dim) == (2, backbone.dim)
    backbone.save(tmp_path)
    with torch.no_grad():
        assert torch.equal(load_backbone(tmp_path).eval()(images), features)
    if backbone.library == "timm" and not backbone.small_stem:  # where timm users load it
        model = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, num_classes=0).eval()
        with torch.no_grad():
            assert torch.allclose(model(images), features, atol=1e-6)
    if backbone.library == "transformers":
        from transformers import AutoModel

        with torch.no_grad():
            out = AutoModel.from_pretrained(str(tmp_path)).eval()(pixel_values=images).pooler_output
        assert torch.allclose(out, features, atol=1e-6)


def test_small_stem_keeps_resolution_for_small_images():
    plain = build_backbone(ModelConfig(arch="resnet18", config={"channels": [8, 8, 8, 8]}))
    small = build_backbone(ModelConfig(arch="resnet18", config={"channels": [8, 8, 8, 8], "small_stem": True}))
    assert plain.model.conv1.stride == (2, 2) and small.model.conv1.stride == (1, 1)
    assert isinstance(small.model.maxpool, torch.nn.Identity)


def test_unknown_backbones_are_clear_errors():
    with pytest.raises(RecipeError, match="'resnet81' is not a timm model.*did you mean 'resnet18'"):
        build_backbone(ModelConfig(arch="resnet81"))
    with pytest.raises(RecipeError, match="timm does not know 'resnet81'"):
        build_backbone(ModelConfig(arch="resnet81", config={"library": "timm"}))
    with pytest.raises(RecipeError, match="small_stem: .* is not a ResNet"):
        build_backbone(ModelConfig(arch="vit", config={**TINY_VIT, "small_stem": True}))
