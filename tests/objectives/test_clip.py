"""The CLIP objective: open_clip export round trip, learning on the world, caption sampling, recipe errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from mmssl.errors import RecipeError
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 24}}


def clip_recipe(output_dir: Path, **train) -> dict:
    return copy.deepcopy({
        "name": "test-clip",
        "output_dir": str(output_dir),
        "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 200, "num_colours": 2, "num_shapes": 2}},
        "model": {"arch": "mmssl-vit-tiny", "config": TINY_CLIP},
        "objective": {"name": "clip"},
        "train": {"batch_size": 32, "learning_rate": 2e-3, "max_steps": 6, "log_every": 2, "progress": False,
                  "cpu": True, "scheduler": "constant", **train},
    })


def setup_objective(raw: dict):
    recipe = parse_recipe(raw)
    objective = get_objective("clip")(recipe)
    objective.setup()
    return objective


def test_export_loads_in_open_clip_with_the_same_embeddings(tmp_path: Path):
    import open_clip

    objective = setup_objective(clip_recipe(tmp_path / "run"))
    module = objective.module
    with torch.no_grad():
        for p in module.parameters():  # make sure trained (not freshly initialised) weights are exported
            p.add_(0.01 * torch.randn_like(p))
        module.temperature.log_scale.fill_(math.log(23.0))
    out = tmp_path / "export"
    out.mkdir()
    objective.export(module, out)
    assert (out / "open_clip_config.json").is_file() and (out / "open_clip_model.safetensors").is_file()

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    module.eval()
    batch = objective.prepare_batch({"index": torch.arange(8)})
    texts = ["a red circle on the left", "there is a green square at the top"]
    with torch.no_grad():
        ours_img = module.model.encode_image(batch["image"])
        ours_txt = module.model.encode_text(objective.tokenizer(texts))
        theirs_img = model.encode_image(batch["image"])
        theirs_txt = model.encode_text(tokenizer(texts))
    assert (ours_img - theirs_img).abs().max() < 1e-5
    assert (ours_txt - theirs_txt).abs().max() < 1e-5
    assert float(model.logit_scale.detach().exp()) == pytest.approx(23.0, rel=1e-5)
    # open_clip's own preprocessing of a world image equals mmssl's evaluation view of it
    from mmssl.data.image_views import eval_view
    from mmssl.data.world import world_columns

    image = world_columns(objective.recipe.data.world, "image_text", "eval")["image"][0]
    mine = eval_view(objective.eval.images[:1], objective.image_size, objective.mean, objective.std)
    assert torch.allclose(preprocess(image)[None], mine, atol=1e-5)


@pytest.mark.slow
def test_training_lowers_the_loss_and_zero_shot_beats_chance(tmp_path: Path):
    from mmssl.train.loop import train

    raw = clip_recipe(tmp_path / "run", max_steps=40, log_every=10, eval_every=20, learning_rate=3e-3,
                      batch_size=64, scheduler="cosine", warmup_steps=5)
    raw["data"]["world"] = {"num_scenes": 600, "num_colours": 4, "num_shapes": 2}
    metrics = train(parse_recipe(raw))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    evals = [r for r in log if r["event"] == "eval"]
    assert losses[-1] < losses[0] - 0.5, losses
    assert len(evals) == 2 and evals[-1]["loss"] < evals[0]["loss"] + 0.05
    chance = 1 / 8
    assert metrics["eval"]["zero_shot_top1"] > chance + 0.15, metrics["eval"]
    assert metrics["eval"]["image_to_text_recall@10"] > 0
    assert metrics["num_classes"] == 8 and metrics["skipped_images"] == 0


def test_one_caption_per_image_drawn_from_the_seeded_rng(tmp_path: Path):
    objective = setup_objective(clip_recipe(tmp_path / "run"))
    index = torch.zeros(64, dtype=torch.long)  # the same image 64 times
    torch.manual_seed(0)
    a = objective.prepare_batch({"index": index})
    torch.manual_seed(0)
    b = objective.prepare_batch({"index": index})
    assert torch.equal(a["text"], b["text"]) and torch.equal(a["image"], b["image"])
    drawn = {tuple(t.tolist()) for t in a["text"]}
    assert len(drawn) == 5  # all five paraphrases of that image appear
    own = {tuple(t.tolist()) for t in objective.tokenizer(objective.train.captions[0])}
    assert drawn == own


def test_recipe_errors(tmp_path: Path):
    raw = clip_recipe(tmp_path / "run")
    raw["objective"]["class_names"] = ["red circle", "blue square", "Red  Circle"]
    with pytest.raises(RecipeError, match="duplicate class names"):
        parse_recipe(raw)
    raw = clip_recipe(tmp_path / "run")
    raw["model"] = {"arch": "mmssl-vit-tinny"}
    with pytest.raises(RecipeError, match="did you mean 'mmssl-vit-tiny'"):
        setup_objective(raw)
    raw = clip_recipe(tmp_path / "run")
    raw["model"] = {"pretrained": str(tmp_path / "stage1")}  # a fine-tuning recipe run before its first stage
    with pytest.raises(RecipeError, match="stage1' is not a folder: give a saved open_clip model"):
        setup_objective(raw)
    raw = clip_recipe(tmp_path / "run")
    raw["model"]["config"] = {"text_cfg": {"vocab_size": 1000}}
    with pytest.raises(RecipeError, match="49408"):
        setup_objective(raw)


@pytest.mark.slow
def test_images_on_disk_train_exactly_like_images_in_memory(tmp_path: Path):
    """objective.image_store=disk (memory-mapped decoded images) changes where images live, not the run."""
    from mmssl.train.loop import train

    checksums = {}
    for store in ("memory", "disk"):
        raw = clip_recipe(tmp_path / store, max_steps=4)
        raw["objective"]["image_store"] = store
        metrics = train(parse_recipe(raw))
        checksums[store] = metrics["parameter_checksums"]
    assert checksums["memory"] == checksums["disk"]
    assert not [p for p in (tmp_path / "disk").iterdir() if p.name.startswith(".images")]  # no scratch left


def test_caption_negatives_join_the_text_negatives_and_two_object_images_are_probed(tmp_path: Path):
    """NegCLIP: each caption's generated negatives (same words, another meaning) are extra text columns of the
    image->text loss, encoded by the same text tower; off, a batch carries none. The evaluation measures
    relation and attribute binding on the held-out two-object images."""
    from mmssl.losses import info_nce
    from mmssl.eval.image_text import evaluate_model

    raw = clip_recipe(tmp_path / "run")
    raw["data"]["world"]["pair_fraction"] = 0.5
    raw["objective"].update(caption_negatives=2)
    objective = setup_objective(raw)
    torch.manual_seed(0)
    batch = objective.prepare_batch({"index": torch.arange(8)})
    assert 8 <= batch["negative_text"].shape[0] <= 16 and batch["negative_text"].shape[1] == batch["text"].shape[1]
    module = objective.module
    out = objective.forward(module, batch)
    image, text, scale = module(batch["image"], torch.cat([batch["text"], batch["negative_text"]]))
    owner = batch["negative_owner"]
    assert owner.shape[0] == batch["negative_text"].shape[0] and owner.min() >= 0 and owner.max() < 8
    others = torch.cat([torch.zeros(8, 8, dtype=torch.bool), owner[None, :] != torch.arange(8)[:, None]], dim=1)
    reference = info_nce(image, text[:8], logit_scale=scale, symmetric=True, extra_negatives=text[8:],
                         false_negative_mask=others)  # each image: its own caption's negatives only
    assert torch.allclose(out["loss"], reference, atol=1e-6)
    plain = objective.forward(module, {k: v for k, v in batch.items() if k != "negative_text"})
    assert out["loss"] > plain["loss"]  # more negatives, and hard ones
    raw_off = clip_recipe(tmp_path / "off")
    raw_off["data"]["world"]["pair_fraction"] = 0.5
    plain_objective = setup_objective(raw_off)
    torch.manual_seed(0)
    off = plain_objective.prepare_batch({"index": torch.arange(8)})
    assert "negative_text" not in off and torch.equal(off["text"], batch["text"])
    metrics = evaluate_model(module.model, objective.tokenizer, objective.eval, objective.class_names,
                             objective.templates, objective.image_size, objective.mean, objective.std, 10.0)
    assert metrics["relation_probes"] >= 5
    assert 0 <= metrics["relation_accuracy"] <= 1 and 0 <= metrics["attribute_binding_accuracy"] <= 1
