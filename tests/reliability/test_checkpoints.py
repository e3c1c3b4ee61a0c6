"""Checkpoints through the real CLI: a diverged run names the checkpoint that is safe to resume (and `latest`
skips the unsafe one); a checkpoint with a planted pickle is refused without running it; `mmssl eval` of a
diverged run says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from clirun import assert_clear_error, mmssl, tree_hashes, write_recipe
from helpers import lm_recipe
from safetensors.torch import load_file

from mmssl.recipes import parse_recipe
from mmssl.train.checkpoints import list_checkpoints, read_state
from mmssl.train.loop import train


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(parse_recipe(lm_recipe(out, "mlm", max_steps=4, save_every=2)))
    return out


def resume_copy(tmp_path: Path, run: Path) -> tuple[Path, Path]:
    """A copy of `run` to tamper with, and a recipe that resumes it for 2 more steps."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    recipe = write_recipe(tmp_path / "r.yaml", lm_recipe(copy, "mlm", max_steps=6, save_every=2,
                                                         resume_from="latest"))
    return copy, recipe


@pytest.mark.slow
def test_divergence_names_the_safe_checkpoint_and_latest_skips_the_unsafe_one(tmp_path, run_with_checkpoints):
    out, _ = resume_copy(tmp_path, run_with_checkpoints)
    # a learning rate of 1e6: step 5's update blows the weights up, so the loss at step 6 is not finite; the
    # checkpoint saved after step 5 holds those weights
    wild = write_recipe(tmp_path / "wild.yaml", lm_recipe(out, "mlm", max_steps=20, save_every=1, keep_checkpoints=5,
                                                          learning_rate=1e6, resume_from="latest"))
    message = assert_clear_error(mmssl("train", str(wild)), "the loss became nan at step 6",
                                 f"the last safe checkpoint is {str(out / 'checkpoints' / 'step-00000004')!r}",
                                 "step-00000005 gave this loss and is marked unsafe")
    assert "train.resume_from=latest" in message
    states = {p.name: read_state(p) for p in list_checkpoints(out)}
    assert states["step-00000005"].unsafe.startswith("the loss became nan on these weights at step 6")
    assert states["step-00000004"].unsafe is None
    assert max(t.abs().max().item() for t in load_file(str(out / "checkpoints/step-00000005/model.safetensors")).values()) > 1e4
    eval_done = mmssl("eval", str(out))
    assert_clear_error(eval_done, "holds no finished model to evaluate: the run diverged", "the loss became nan")
    # resuming at a sane learning rate continues from step 4 and finishes with finite losses
    sane = write_recipe(tmp_path / "sane.yaml", lm_recipe(out, "mlm", max_steps=8, save_every=2, resume_from="latest"))
    done = mmssl("train", str(sane))
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "start"][-1] == 4
    assert all(e["loss"] < 20 for e in events if e["event"] == "train" and e["step"] > 6)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_planted_pickle_is_refused_and_never_run(tmp_path, run_with_checkpoints, target):
    out, recipe = resume_copy(tmp_path, run_with_checkpoints)
    checkpoint = list_checkpoints(out)[-1]
    marker = tmp_path / "code-ran"
    torch.save(Payload(marker), checkpoint / target)
    before = tree_hashes(out / "checkpoints"), tree_hashes(out / "model.safetensors")
    done = mmssl("train", str(recipe))
    if target == "custom_checkpoint_0.pkl":  # not a file the run wrote
        assert_clear_error(done, "holds files the run did not write (custom_checkpoint_0.pkl)")
    else:  # one of the run's own file names, with a payload inside
        assert_clear_error(done, "mmssl never unpickles code from a checkpoint")
    assert not marker.exists()
    assert (tree_hashes(out / "checkpoints"), tree_hashes(out / "model.safetensors")) == before


@pytest.mark.slow
def test_a_checkpoint_from_before_json_trainer_state_is_refused(tmp_path, run_with_checkpoints):
    out, recipe = resume_copy(tmp_path, run_with_checkpoints)
    state_file = list_checkpoints(out)[-1] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["files"], state["scheduler"]
    state_file.write_text(json.dumps(state))
    assert_clear_error(mmssl("train", str(recipe)), "was written by an older mmssl", "start a fresh run")


@pytest.mark.slow
def test_the_checkpoint_a_run_resumed_from_is_not_blamed_for_a_nan_right_after(tmp_path, run_with_checkpoints,
                                                                             monkeypatch):
    """Its weights gave finite losses when it was saved, so a NaN on the first step after resuming comes from
    what changed (here an injected fault), and it stays resumable."""
    from mmssl.errors import TrainingDiverged
    from mmssl.models.lm import MaskedLMModule

    out, _ = resume_copy(tmp_path, run_with_checkpoints)
    original = MaskedLMModule.forward
    monkeypatch.setattr(MaskedLMModule, "forward",
                        lambda self, **batch: {"loss": original(self, **batch)["loss"] * float("nan")})
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step 5; the last safe checkpoint is "
                                               r".*step-00000004'; resume"):
        train(parse_recipe(lm_recipe(out, "mlm", max_steps=6, save_every=2, resume_from="latest")))
    assert read_state(list_checkpoints(out)[-1]).unsafe is None
