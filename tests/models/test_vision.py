"""Image backbones from timm, torchvision and transformers: features of the right size, and a saved backbone
loads back, bit for bit, through its own library (timm local-dir, AutoModel) and through mmssl."""

from __future__ import annotations

import json

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
    backbone = build_backbone(ModelConfig(arch=arch, config=config))
    images = torch.randn(2, 3, 32, 32)
    convnet = backbone.library != "transformers"  # (this ViT takes 32 px only)
    with torch.no_grad():
        if convnet:
            backbone(images[:, :, :16, :16])
        backbone(images)  # training mode: the backbone notes the (largest) size it is trained at
        backbone.eval()
        if convnet:
            backbone(torch.randn(1, 3, 48, 48))  # eval mode: not a training size
        features = backbone(images)
    assert features.shape == (2, dim) == (2, backbone.dim) and backbone.image_size == 32
    backbone.save(tmp_path, trained_on="two random batches")
    with torch.no_grad():
        assert torch.equal(load_backbone(tmp_path).eval()(images), features)
    if backbone.library == "timm":  # the config.json timm reads describes this model, not an ImageNet checkpoint
        exported = json.loads((tmp_path / "config.json").read_text())
        cfg = exported["pretrained_cfg"]
        assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0
        assert (cfg["mean"], cfg["std"]) == (list(backbone.mean), list(backbone.std))
        assert not {"tag", "license", "origin_url", "hf_hub_id", "paper_ids", "test_input_size"} & set(cfg)
        assert "32 px on two random batches" in cfg["description"]
    if backbone.library == "timm" and not backbone.small_stem:  # where timm users load it: the same model
        model = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, num_classes=0).eval()
        assert model.pretrained_cfg["input_size"] == (3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(model(images), features, atol=1e-6)
    if backbone.small_stem:  # timm has no such stem: it refuses the folder (with or without weights), naming the loader
        for pretrained in (True, False):
            with pytest.raises(RuntimeError, match="small stem .* timm cannot build; load this folder with "
                                                   "mmssl.models.vision.load_backbone"):
                timm.create_model(f"local-dir:{tmp_path}", pretrained=pretrained, num_classes=0)
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
