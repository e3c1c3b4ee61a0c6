"""End-to-end training of tiny MLM/CLM models through the real trainer, in process."""

import json

import pytest
import torch
from helpers import ROOT, lm_recipe
from transformers import pipeline

from mmssl.models.lm import MaskedLMModule
from mmssl.errors import CheckpointError, DataError, RecipeError, TrainingDiverged
from mmssl.recipes import apply_overrides, parse_recipe
from mmssl.train.checkpoints import list_checkpoints, read_state
from mmssl.train.loop import train


def run(raw: dict, *overrides: str) -> dict:
    return train(parse_recipe(apply_overrides(raw, list(overrides))))


def train_losses(output_dir) -> list[float]:
    events = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["event"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_training_lowers_loss_and_writes_a_loadable_model(tmp_path, objective):
    out = tmp_path / objective
    metrics = run(lm_recipe(out, objective, max_steps=40, eval_every=20, save_every=20))
    losses = train_losses(out)
    assert losses[-1] < losses[0] - 0.5, losses
    assert metrics["eval"]["perplexity"] < metrics["vocab_size"] / 4  # far better than uniform guessing
    assert metrics["steps"] == 40 and metrics["processes"] == 1
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "metrics.json", "log.jsonl"):
        assert (out / name).is_file(), name
    assert [p.name for p in list_checkpoints(out)] == ["step-00000020", "step-00000040"]
    if objective == "mlm":
        fill = pipeline("fill-mask", model=str(out))
        predictions = fill("a red [MASK] above a blue square")
        assert len(predictions) == 5 and all(p["token_str"] for p in predictions)
    else:
        generate = pipeline("text-generation", model=str(out))
        text = generate("a red", max_new_tokens=6, do_sample=False)[0]["generated_text"]
        assert text.startswith("a red")


@pytest.mark.slow
def test_gradient_accumulation_matches_a_large_batch(tmp_path):
    """2 micro-batches of 8 with accumulation give the same update as one batch of 16 (no dropout)."""
    tiny = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    a = lm_recipe(tmp_path / "a", "mlm", max_steps=3, batch_size=16)
    b = lm_recipe(tmp_path / "b", "mlm", max_steps=3, batch_size=8, gradient_accumulation_steps=2)
    for raw in (a, b):
        raw["model"]["config"] = {**raw["model"]["config"], **tiny}
        raw["objective"]["mask_probability"] = 0.3
    # the same masks: accumulation seeds each micro-batch, so compare through the clm objective instead
    a["objective"], b["objective"] = {"name": "clm", "max_length": 32}, {"name": "clm", "max_length": 32}
    a["model"] = b["model"] = {"arch": "gpt2", "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
                                                         "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}
    ma, mb = run(a), run(b)
    assert ma["parameter_checksums"][0] == pytest.approx(mb["parameter_checksums"][0], rel=1e-5)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(lm_recipe(out, "mlm", max_steps=4, save_every=2))
    before = (out / "model.safetensors").read_bytes()
    original = MaskedLMModule.forward
    calls = []

    def poisoned(self, **batch):  # fault injection: the loss turns NaN on the third step after resuming
        calls.append(1)
        out = original(self, **batch)
        return {"loss": out["loss"] * (float("nan") if len(calls) >= 3 else 1.0)}

    monkeypatch.setattr(MaskedLMModule, "forward", poisoned)
    # step-6's weights gave the NaN at step 7: step-4 (whose weights gave finite losses) is the safe one
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step 7; the last safe checkpoint is "
                                               r".*step-00000004' \(step-00000006 gave this loss and is marked unsafe\)"):
        run(lm_recipe(out, "mlm", max_steps=30, save_every=2, resume_from="latest"))
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004", "step-00000006"]
    assert read_state(list_checkpoints(out)[-1]).unsafe.startswith("the loss became nan on these weights at step 7")
    assert read_state(list_checkpoints(out)[0]).unsafe is None
    assert (out / "model.safetensors").read_bytes() == before  # the exported model was not touched
    monkeypatch.setattr(MaskedLMModule, "forward", original)
    resumed = run(lm_recipe(out, "mlm", max_steps=8, save_every=2, resume_from="latest"))  # skips step-6
    starts = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "start"]
    assert resumed["steps"] == 8 and starts[-1]["step"] == 4


@pytest.mark.slow
def test_resume_errors(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        run(lm_recipe(out, "mlm", resume_from="latest"))
    with pytest.raises(CheckpointError, match="is not a checkpoint folder"):
        run(lm_recipe(out, "mlm", resume_from=str(tmp_path / "missing")))
    run(lm_recipe(out, "mlm", max_steps=2, save_every=2))
    with pytest.raises(RecipeError, match="already holds a run"):
        run(lm_recipe(out, "mlm", max_steps=2))
    other = lm_recipe(out, "mlm", max_steps=4, resume_from="latest")
    other["model"]["config"] = {**other["model"]["config"], "hidden_size": 64}
    with pytest.raises(CheckpointError, match="different recipe: model differ"):
        run(other)


@pytest.mark.slow
def test_bad_inputs_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    raw = lm_recipe(tmp_path / "o", "mlm")
    raw["data"] = {"source": "files", "path": str(empty)}
    with pytest.raises(DataError, match="no examples found"):
        run(raw)
    raw = lm_recipe(tmp_path / "o2", "mlm")
    raw["objective"]["max_length"] = 512
    with pytest.raises(RecipeError, match="exceeds the model's 64 positions"):
        run(raw)
    raw = lm_recipe(tmp_path / "o3", "mlm")
    raw["model"] = {"arch": "bertt"}
    with pytest.raises(RecipeError, match="unknown transformers model type 'bertt'; did you mean 'bert'"):
        run(raw)
    raw = lm_recipe(tmp_path / "o4", "mlm")
    raw["model"] = {"pretrained": str(tmp_path / "no-model")}
    with pytest.raises(Exception, match="could not be loaded"):
        run(raw)


@pytest.mark.slow
def test_unpacked_long_texts_are_truncated_and_reported(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["a red circle above a blue square " * 20] * 30 + ["a green star"] * 30))
    raw = lm_recipe(tmp_path / "o", "mlm", max_steps=2)
    raw["data"] = {"source": "files", "path": str(corpus)}
    raw["objective"]["packing"] = False
    metrics = run(raw)
    assert metrics["truncated_texts"] > 0


@pytest.mark.slow
def test_tensorboard_tracker_writes_events(tmp_path):
    out = tmp_path / "tb"
    run(lm_recipe(out, "clm", max_steps=4, log_every=2, trackers=["tensorboard"]))
    assert list((out / "tracking").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_eval_cli_matches_training_eval(tmp_path, capsys):
    from mmssl.commands import main

    out = tmp_path / "run"
    metrics = run(lm_recipe(out, "mlm", max_steps=6))
    assert main(["eval", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["perplexity"] == pytest.approx(metrics["eval"]["perplexity"], rel=1e-5)
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not an mmssl output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_continue_pretraining_from_a_saved_model_and_tokenizer(tmp_path):
    first = tmp_path / "first"
    run(lm_recipe(first, "mlm", max_steps=10))
    raw = lm_recipe(tmp_path / "second", "mlm", max_steps=10)
    raw["model"] = {"pretrained": str(first)}
    raw["tokenizer"] = {"path": str(first)}
    metrics = run(raw)
    before = json.loads((first / "metrics.json").read_text())["eval"]["loss"]
    assert metrics["vocab_size"] == json.loads((first / "metrics.json").read_text())["vocab_size"]
    assert metrics["eval"]["loss"] < before  # it continued from the trained weights


@pytest.mark.slow
def test_cli_prints_one_line_errors_without_traceback(tmp_path):
    import subprocess

    from helpers import PYTHON

    done = subprocess.run([PYTHON, "-m", "mmssl", "train", "configs/mlm_world.yaml", "train.batchsize=3",
                           f"output_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        done.stderr.strip().splitlines()[0]] and "train.batchsize: unknown key" in done.stderr
    assert "Traceback" not in done.stderr
