"""CLIP with a Hugging Face text tower from a local folder (open_clip's CustomTextCLIP + HFTokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from mmssl.data.tokenizers import train_wordpiece
from mmssl.data.world import world_columns
from mmssl.recipes import WorldConfig, parse_recipe
from mmssl.registry import get_objective


def test_hf_text_tower_trains_exports_and_loads(tmp_path: Path):
    import open_clip

    world = {"num_scenes": 60, "num_colours": 2, "num_shapes": 2}
    text_dir = tmp_path / "tiny-bert"
    tokenizer = train_wordpiece(world_columns(WorldConfig(**world), "text")["text"], 200, 1, True)
    tokenizer.save_pretrained(text_dir)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(text_dir)
    raw = {
        "output_dir": str(tmp_path / "run"),
        "data": {"source": "world", "world": world},
        "model": {"arch": "mmssl-vit-tiny", "config": {
            "embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16},
            "text_cfg": {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir), "context_length": 24,
                         "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler"}}},
        "objective": {"name": "clip"},
        "train": {"batch_size": 16, "max_steps": 2, "cpu": True, "progress": False},
    }
    objective = get_objective("clip")(parse_recipe(raw))
    objective.setup()
    module = objective.module
    assert type(module.model).__name__ == "CustomTextCLIP"
    bert = BertModel.from_pretrained(text_dir)
    assert torch.equal(module.model.text.transformer.embeddings.word_embeddings.weight,
                       bert.embeddings.word_embeddings.weight)  # the local pretrained tower was loaded

    batch = objective.prepare_batch({"index": torch.arange(16)})
    out = objective.forward(module, batch)
    out["loss"].backward()
    assert module.model.text.transformer.embeddings.word_embeddings.weight.grad is not None

    export = tmp_path / "export"
    export.mkdir()
    objective.export(module, export)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{export}")
    tok = open_clip.get_tokenizer(f"local-dir:{export}")
    model.eval()
    module.eval()
    texts = ["a red circle on the left", "there is a green square"]
    with torch.no_grad():
        ours = module.model.encode_text(objective.tokenizer(texts))
        theirs = model.encode_text(tok(texts))
        assert (ours - theirs).abs().max() < 1e-5
        assert (module.model.encode_image(batch["image"]) - model.encode_image(batch["image"])).abs().max() < 1e-5
