"""The captioning objective's model: a CoCa from scratch starts from the same, finite weights for one seed."""

from __future__ import annotations

import torch

from mmssl.config import ModelConfig
from mmssl.models.clip import build_open_clip, resolve_config

TINY_COCA = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
                            "attn_pooler_queries": 8, "attn_pooler_heads": 2},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 16},
             "multimodal_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 16, "attn_pooler_heads": 2}}


def test_a_coca_from_scratch_is_seeded_and_its_decoder_projection_is_initialised():
    """open_clip leaves CoCa's decoder projection as torch.empty memory; built here it is drawn from the seed."""
    cfg = ModelConfig(arch="mmssl-coca-tiny", config=TINY_COCA)
    model_cfg = resolve_config(cfg)
    states = []
    for fill in (0.0, 1e30):
        torch.empty(1 << 16).fill_(fill)  # what torch.empty might hand back next
        torch.manual_seed(0)
        states.append(build_open_clip(model_cfg, cfg).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    projection = states[0]["text_decoder.text_projection"]
    assert 0.05 < float(projection.std()) < 0.4  # about width ** -0.5
