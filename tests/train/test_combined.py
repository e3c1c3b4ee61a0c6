"""Combined recipes (several objectives over one shared encoder): the loss is the weighted sum of the
objectives' losses on the same batches, streams are visited in their configured proportions, every row of a
stream once per pass, a killed two-stream run resumes bit-identically, two real processes stay in sync, the
outputs load natively and share the encoder's weights, and bad combinations get one clear error."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest
import torch
from clirun import assert_clear_error, cli_env, mmssl, straight_and_resumed, write_recipe
from helpers import PYTHON, TINY_BERT

from mmssl.errors import MmsslError
from mmssl.hub import render_card
from mmssl.data.streams import Stream, StreamBatchSampler, StreamSchedule, interleave
from mmssl.objectives.combined import Combined, build_objective
from mmssl.recipes import parse_recipe, recipe_to_dict
from mmssl.train.loop import train

TINY_RESNET = {"channels": [8, 8, 16, 16], "small_stem": True}


def text_recipe(output_dir, strategy: str = "sum", simcse_data: dict | None = None, **train) -> dict:
    simcse = {"name": "simcse", "mode": "unsupervised", "max_length": 32, "weight": 0.5}
    if simcse_data is not None:
        simcse["data"] = simcse_data
    return {
        "name": "test-mlm-simcse", "output_dir": str(output_dir), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 300}},
        "tokenizer": {"vocab_size": 300},
        "model": {"arch": "bert", "config": dict(TINY_BERT)},
        "objectives": [{"name": "mlm", "max_length": 32, "weight": 2.0}, simcse],
        "mixing": {"strategy": strategy},
        "train": {"batch_size": 8, "learning_rate": 3e-3, "max_steps": 12, "log_every": 2, "progress": False,
                  "cpu": True, **train},
    }


def image_recipe(output_dir, strategy: str = "sum") -> dict:
    view = {"image_size": 16, "projection_dim": 16, "hidden_dim": 32, "eval_max_images": 100, "eval_before": False,
            "linear_probe": False}
    return {
        "name": "test-simclr-rotnet", "output_dir": str(output_dir), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 120, "image_size": 16, "pair_fraction": 0.0}},
        "model": {"arch": "resnet18", "config": dict(TINY_RESNET)},
        "objectives": [{"name": "simclr", **view, "share": 1}, {"name": "rotnet", **view, "share": 3}],
        "mixing": {"strategy": strategy},
        "train": {"batch_size": 16, "learning_rate": 3e-3, "max_steps": 8, "log_every": 2, "progress": False,
                  "cpu": True},
    }


def test_the_loss_is_the_weighted_sum_of_each_objectives_loss_on_the_same_batches(tmp_path):
    objective = build_objective(parse_recipe(text_recipe(tmp_path / "run")))
    assert isinstance(objective, Combined)
    objective.setup()
    module = objective.module
    mlm, simcse = objective.subs["mlm"], objective.subs["simcse"]
    # one encoder: the SentenceTransformer side embeds with the MLM's BERT, and the tokenizer is one object
    assert simcse.model.encoder.model is mlm.model.base_model and simcse.tokenizer is mlm.tokenizer
    sampler = objective.batch_sampler(8, 1)
    rows = next(iter(sampler))
    assert {stream for stream, _, _ in rows} == {0, 1} and len(rows) == 16
    torch.manual_seed(5)
    batch = objective.prepare_batch(objective.collate([objective.train_dataset[key] for key in rows]))
    torch.manual_seed(6)
    combined = objective.forward(module, batch)
    torch.manual_seed(6)  # the same dropout draws, in the same order
    alone = [sub.forward(module.objectives[label], batch["parts"][label])["loss"]
             for label, sub in objective.subs.items()]
    assert torch.allclose(combined["loss"], 2.0 * alone[0] + 0.5 * alone[1], rtol=1e-6, atol=1e-6)
    assert torch.allclose(combined["mlm/loss"], alone[0]) and torch.allclose(combined["simcse/loss"], alone[1])

    balanced = build_objective(parse_recipe({**text_recipe(tmp_path / "run2"),
                                             "mixing": {"strategy": "sum", "balancing": "uncertainty"}}))
    balanced.setup()
    balanced.module.load_state_dict(module.state_dict(), strict=False)
    with torch.no_grad():
        balanced.module.log_variance.copy_(torch.tensor([0.3, -0.2]))
    torch.manual_seed(6)
    out = balanced.forward(balanced.module, batch)
    s = balanced.module.log_variance.detach()
    expected = torch.exp(-s[0]) * 2.0 * alone[0] + s[0] + torch.exp(-s[1]) * 0.5 * alone[1] + s[1]
    assert torch.allclose(out["loss"], expected, rtol=1e-5, atol=1e-5)
    out["loss"].backward()
    assert balanced.module.log_variance.grad is not None and balanced.module.log_variance.grad.abs().min() > 0


def test_alternating_visits_each_stream_in_its_share_and_every_row_once_per_pass():
    order = interleave([3.0, 1.0], 40)
    assert Counter(order) == {0: 30, 1: 10}
    for prefix in range(1, 41):  # spread evenly: every prefix is within one visit of 3:1
        assert abs(order[:prefix].count(1) - prefix / 4) <= 1
    streams = [Stream("a", 96, 3.0), Stream("b", 40, 1.0)]
    schedule = StreamSchedule(streams, "alternate", batch_size=4, world_size=2, seed=0)
    sampler = StreamBatchSampler(schedule)
    lists = [batch for epoch in range(3) for batch in (sampler.set_epoch(epoch), list(sampler))[1]]
    assert len(lists) == 3 * schedule.steps_per_epoch * 2
    steps = [lists[i : i + 2] for i in range(0, len(lists), 2)]
    for per_process in steps:  # both processes run the same stream in a step, on different rows
        assert {s for s, _, _ in per_process[0]} == {s for s, _, _ in per_process[1]}
        assert not {r for _, _, r in per_process[0]} & {r for _, _, r in per_process[1]}
    visits = Counter(per_process[0][0][0] for per_process in steps)
    assert abs(visits[0] / len(steps) - 0.75) < 0.02
    # each stream's rows: one pass is a permutation (12 rounds of 8 rows for a, 5 rounds of 8 for b)
    first_pass = [r for per_process in steps for lst in per_process for s, p, r in lst if s == 1 and p == 0]
    assert sorted(first_pass) == list(range(40))
    # objectives reading the same data into the same rows see the same examples in every step of a sum
    same = StreamSchedule([Stream("a", 40, 1.0, "world"), Stream("b", 40, 1.0, "world"), Stream("c", 40, 1.0, "other")],
                          "sum", batch_size=4, world_size=1, seed=0)
    for step in StreamBatchSampler(same):
        rows = {s: [r for t, _, r in step if t == s] for s in range(3)}
        assert rows[0] == rows[1] and rows[0] != rows[2]
    sample = StreamSchedule(streams, "sample", batch_size=4, world_size=1, seed=0)
    draws = Counter(j for epoch in range(40) for j in sample.order(epoch))
    assert abs(draws[0] / sum(draws.values()) - 0.75) < 0.02
    assert sample.order(3) == StreamSchedule(streams, "sample", 4, 1, 0).order(3)  # seeded: the same after a resume


@pytest.mark.slow
def test_a_killed_two_stream_run_resumes_bit_identical(tmp_path):
    """MLM on the world's captions and SimCSE on another world's, sampled per step: the streams' positions,
    passes and draws come back exactly after a kill."""
    from mmssl.config import TokenizerConfig
    from mmssl.data.tokenizers import build_tokenizer

    raw = text_recipe(tmp_path / "unused", "sample", simcse_data={"source": "world", "world": {"num_scenes": 60,
                                                                                                "seed": 3}},
                      max_steps=30, save_every=5, keep_checkpoints=10)
    # one tokenizer for both runs: `tokenizers` breaks ties between equal merges in a per-process order, so two
    # separately trained ones may differ (a resumed run reuses its checkpoint's, which this test also covers)
    words = [f"{c} {s} on the {p}" for c in ("a red", "a blue", "the green") for s in ("circle", "square")
             for p in ("left", "right")]
    build_tokenizer(TokenizerConfig(vocab_size=100, min_frequency=1), "wordpiece", words).save_pretrained(tmp_path / "tok")
    raw["tokenizer"] = {"path": str(tmp_path / "tok")}
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    a, b, killed_at = straight_and_resumed(recipe, tmp_path, 10, 30)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    train_logs = [e for e in logs if e["event"] == "train"]
    assert any("mlm/loss" in e for e in train_logs) and any("simcse/loss" in e for e in train_logs)
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["objective"] == "mlm+simcse" and metrics["objectives"]["simcse"]["train_rows"] < 400
    starts = [e["step"] for e in map(json.loads, (broken / "log.jsonl").read_text().splitlines()) if e["event"] == "start"]
    assert starts == [0, killed_at]


@pytest.mark.slow
def test_outputs_load_natively_and_share_the_encoder(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", text_recipe(out, max_steps=4))
    done = mmssl("train", str(recipe))
    assert done.returncode == 0, done.stderr[-2000:]
    lm = AutoModelForMaskedLM.from_pretrained(out / "mlm")
    st = SentenceTransformer(str(out / "simcse"))
    assert st.encode(["a red circle"]).shape == (1, TINY_BERT["hidden_size"])
    for name, weight in lm.base_model.named_parameters():
        assert torch.equal(weight, st[0].auto_model.get_parameter(name)), name
    # the whole run: each objective's folder with its own evaluation, and the association tests (--bias)
    evaluated = mmssl("eval", str(out), "--bias")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    both = json.loads(evaluated.stdout)
    assert both["mlm"]["perplexity"] > 1 and 0 <= both["simcse"]["recall@1"] <= 1
    for label in ("mlm", "simcse"):
        tests = json.loads((out / label / "metrics.json").read_text())["bias"]["tests"]
        assert set(tests) == {f"{kind}{n}" for kind in ("weat", "seat") for n in (
            "1_flowers_insects", "6_career_family", "7_math_arts", "8_science_arts")}
        assert all(0 < t["p_value"] <= 1 and abs(t["effect_size"]) < 2.5 for t in tests.values())
        assert tests["seat7_math_arts"]["sizes"][0] == 8 * 7 and tests["weat1_flowers_insects"]["sizes"][0] == 25
    card = render_card(out / "simcse", "me/simcse")  # each folder publishes as it is, saying what it was trained with
    assert "Trained jointly with:** mlm (mlm)" in card and "sentence-transformers" in card
    assert "| seat6_career_family | male names vs female names | career vs family |" in card and "not evidence of an unbiased model" in card
    with pytest.raises(MmsslError, match="combined run"):
        render_card(out, "me/both")
    saved = parse_recipe(__import__("yaml").safe_load((out / "recipe.yaml").read_text()))
    assert [e.label for e in saved.objectives] == ["mlm", "simcse"] and saved.objectives[0].weight == 2.0
    assert recipe_to_dict(saved) == recipe_to_dict(parse_recipe(text_recipe(out, max_steps=4)))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_alternate_objectives_in_sync(tmp_path):
    """Two real processes, one objective per step (the other's head gets no gradient in that step)."""
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", image_recipe(out, "alternate"))
    done = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mmssl", "train", str(recipe)], env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["parameters_in_sync"]
    train_logs = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]
    assert sum("rotnet/loss" in e for e in train_logs) > sum("simclr/loss" in e for e in train_logs) > 0


@pytest.mark.slow
def test_an_objective_listed_twice_without_distinct_labels_is_one_clear_error(tmp_path):
    raw = {**text_recipe(tmp_path / "run", max_steps=2), "objectives": [{"name": "mlm"}, {"name": "mlm"}]}
    assert_clear_error(mmssl("train", str(write_recipe(tmp_path / "r.yaml", raw))),
                       "label 'mlm' is already used by objectives[0]", "label: mlm_2")


@pytest.mark.parametrize("change, message", [
    ({"objectives": [{"name": "mlm", "weight": 0}, {"name": "simcse"}]}, "objectives[0].weight"),
    ({"objectives": [{"name": "mlm"}, {"name": "simcse", "weight": -1}]}, "objectives[1].weight"),
    ({"objectives": [{"name": "mlm"}, {"name": "mlm", "label": "a/b"}]}, "objectives[1].label"),
    ({"objective": {"name": "mlm"}}, "both objective and objectives"),
    ({"objectives": [{"name": "mlm", "share": 2}, {"name": "simcse"}]}, "objectives[1].share is not"),
    ({"mixing": {"strategy": "round_robin"}}, "mixing.strategy"),
    ({"objectives": []}, "non-empty list"),
    ({"push_to_hub": {"repo_id": "me/x"}}, "mmssl push OUTPUT_DIR/<label>"),
])
def test_bad_combinations_are_one_clear_error(tmp_path, change, message):
    from mmssl.errors import RecipeError

    with pytest.raises(RecipeError) as caught:
        parse_recipe({**text_recipe(tmp_path / "run", max_steps=2), **change})
    assert message in str(caught.value)


def test_gradcache_in_a_combined_recipe_is_refused(tmp_path):
    from mmssl.errors import RecipeError

    raw = {**text_recipe(tmp_path / "run"), "objectives": [
        {"name": "mlm", "max_length": 32}, {"name": "simcse", "max_length": 32, "cached_chunk_size": 4}]}
    with pytest.raises(RecipeError, match="cached_chunk_size"):
        build_objective(parse_recipe(raw)).setup()


def test_objectives_that_share_no_weights_are_refused():
    from types import SimpleNamespace

    from mmssl.errors import RecipeError

    shared = torch.nn.Linear(2, 2)
    subs = {"a": SimpleNamespace(module=torch.nn.Sequential(shared, torch.nn.Linear(2, 2))),
            "b": SimpleNamespace(module=torch.nn.Sequential(shared)),
            "c": SimpleNamespace(module=torch.nn.Linear(2, 2))}
    entries = {k: SimpleNamespace(params=SimpleNamespace(name=k)) for k in subs}
    Combined._check_shared(SimpleNamespace(subs={k: subs[k] for k in "ab"}, entries=entries))  # a and b share
    with pytest.raises(RecipeError, match="'c' shares no weights"):
        Combined._check_shared(SimpleNamespace(subs=subs, entries=entries))


TINY_COCA = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
                            "attn_pooler_queries": 8, "attn_pooler_heads": 2},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 16},
             "multimodal_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 16, "attn_pooler_heads": 2}}


def coca_recipe(output_dir, objectives: list[dict], **train) -> dict:
    return {
        "name": "test-coca", "output_dir": str(output_dir), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 200, "num_colours": 2, "num_shapes": 2}},
        "model": {"arch": "mmssl-coca-tiny", "config": TINY_COCA},
        "objectives": objectives,
        "train": {"batch_size": 32, "learning_rate": 2e-3, "max_steps": 16, "log_every": 4, "progress": False,
                  "cpu": True, "scheduler": "constant", "eval_every": 8, **train},
    }


@pytest.mark.slow
def test_clip_and_captioning_train_one_coca_model_that_open_clip_loads_and_that_captions(tmp_path):
    import open_clip
    from safetensors.torch import load_file

    from mmssl.models.captioning import decode, generate_captions

    out = tmp_path / "run"
    views = {"horizontal_flip": 0.0, "color_jitter": 0.0}
    recipe = write_recipe(tmp_path / "r.yaml", coca_recipe(out, [
        {"name": "clip", "views": views}, {"name": "captioning", "weight": 2.0, "views": views,
                                           "eval_generate_images": 8}]))
    done = mmssl("train", str(recipe))
    assert done.returncode == 0, done.stderr[-3000:]
    evals = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "eval"]
    assert evals[-1]["captioning/caption_loss"] < evals[0]["captioning/caption_loss"] - 0.5  # it learns to caption
    assert 0 <= evals[-1]["clip/zero_shot_top1"] <= 1
    # one model: both folders hold the same weights, the learned logit scale included
    a, b = load_file(str(out / "clip/open_clip_model.safetensors")), load_file(str(out / "captioning/open_clip_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out / 'captioning'}")
    assert type(model).__name__ == "CoCa"
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out / 'captioning'}")
    from PIL import Image

    image = preprocess(Image.new("RGB", (32, 32), (200, 30, 30))).unsqueeze(0)
    ids = generate_captions(model, image, max_length=10)
    assert ids.shape[0] == 1 and 2 <= ids.shape[1] <= 10 and ids[0, 0] == 49406
    assert isinstance(decode(tokenizer, ids)[0], str)
    generated = json.loads((out / "captioning/generated_captions.json").read_text())
    assert len(generated) == 8 and all(g["generated"] and g["reference"] for g in generated)
    evaluated = mmssl("eval", str(out / "captioning"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["caption_loss"] > 0
    evaluated = mmssl("eval", str(out / "clip"), "--bias")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    skin = json.loads(evaluated.stdout)["bias"]["tests"]["image_skin_tone"]
    assert skin["emoji"] >= 300
    assert 0 < skin["p_value"] <= 1 and not skin["exact"] and len(skin["mean_association_by_tone"]) == 5
    assert "cartoon emoji" in json.loads((out / "clip/metrics.json").read_text())["bias"]["caveats"]


@pytest.mark.slow
def test_captioning_needs_a_coca_model(tmp_path):
    raw = coca_recipe(tmp_path / "run", [{"name": "captioning"}])
    raw["model"] = {"arch": "mmssl-vit-tiny", "config": {k: v for k, v in TINY_COCA.items() if k != "multimodal_cfg"}}
    raw["model"]["config"]["vision_cfg"] = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}
    assert_clear_error(mmssl("train", str(write_recipe(tmp_path / "r.yaml", raw))), "needs a CoCa model")


def test_overrides_name_an_objective_by_label_or_index(tmp_path):
    from mmssl.errors import RecipeError
    from mmssl.recipes import apply_overrides

    raw = text_recipe(tmp_path / "run")
    recipe = parse_recipe(apply_overrides(raw, ["objectives.simcse.weight=0.25", "objectives.0.mask_probability=0.3",
                                                "mixing.strategy=alternate"]))
    assert [e.weight for e in recipe.objectives] == [2.0, 0.25] and recipe.objectives[0].params.mask_probability == 0.3
    assert recipe.mixing.strategy == "alternate"
    with pytest.raises(RecipeError, match="has no item 'clip'; name one of 'mlm', 'simcse'"):
        apply_overrides(raw, ["objectives.clip.weight=2"])
    with pytest.raises(RecipeError, match="objectives is a list"):
        apply_overrides(raw, ["objectives.weight=2"])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_captioning_alone_trains_on_two_processes(tmp_path):
    """The caption loss leaves CoCa's contrastive projections without gradient: DDP is told to look for them."""
    out = tmp_path / "run"
    raw = coca_recipe(out, [], max_steps=3, eval_every=0, batch_size=8)
    del raw["objectives"]
    raw["objective"] = {"name": "captioning", "eval_generate_images": 4}
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    done = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mmssl", "train", str(recipe)], env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["parameters_in_sync"] and metrics["steps"] == 3


@pytest.mark.slow
def test_a_combined_recipe_trains_on_streamed_data(tmp_path):
    """MLM + SimCSE alternating over the built-in world read as a stream (one loader worker): every step runs
    one objective, both learn, the shares are kept, and both folders export."""
    raw = text_recipe(tmp_path / "run", strategy="alternate", max_steps=12, num_workers=1)
    raw["data"].update(streaming=True, shuffle_buffer=0)
    metrics = train(parse_recipe(raw))
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if '"train"' in line]
    assert steps and all("mlm/loss" in s or "simcse/loss" in s for s in steps)
    assert metrics["steps"] == 12 and metrics["stream_shards_per_process"][0] > 0
    assert (tmp_path / "run" / "mlm" / "config.json").is_file() and (tmp_path / "run" / "simcse" / "modules.json").is_file()
