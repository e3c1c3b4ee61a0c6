"""Real processes: kill -9 mid-training and resume to the same weights; two-process training."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import PYTHON, lm_recipe
from safetensors.torch import load_file

from mmssl.data.tokenizers import train_wordpiece
from mmssl.data.world import world_columns
from mmssl.recipes import WorldConfig
from mmssl.train.checkpoints import list_checkpoints


def write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def mmssl(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "mmssl", *args], env=env, capture_output=True, text=True, timeout=timeout)


def weights(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, cli_env):
    # 300 scenes -> about 58 batches per epoch: the kill lands mid-epoch and the resumed run crosses an epoch.
    raw = lm_recipe(tmp_path / "unused", "mlm", max_steps=80, save_every=5, log_every=5)
    # Pin the tokenizer: `tokenizers` may learn a different WordPiece vocabulary in another process.
    tokenizer = train_wordpiece([world_columns(WorldConfig(num_scenes=300), "text")["text"]], 300, 2, True)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    raw["tokenizer"] = {"path": str(tmp_path / "tokenizer")}
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    recipe = write_recipe(tmp_path / "r.yaml", raw)

    done = mmssl("train", str(recipe), f"output_dir={straight}", env=cli_env)
    assert done.returncode == 0, done.stderr

    proc = subprocess.Popen([PYTHON, "-m", "mmssl", "train", str(recipe), f"output_dir={interrupted}"],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (interrupted / "checkpoints" / "step-00000020").exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (interrupted / "metrics.json").exists()
    killed_at = int(list_checkpoints(interrupted)[-1].name.split("-")[1])
    assert 20 <= killed_at < 80

    resumed = mmssl("train", str(recipe), f"output_dir={interrupted}", "train.resume_from=latest", env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(straight), weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), f"{name} differs after kill and resume"
    log = [json.loads(line) for line in (interrupted / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["event"] == "start"] == [0, killed_at]


@pytest.mark.slow
def test_interrupted_save_is_ignored_and_cleaned(tmp_path, cli_env):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", lm_recipe(out, "clm", max_steps=4, save_every=2))
    assert mmssl("train", str(recipe), env=cli_env).returncode == 0
    # what a kill during a save leaves behind: a temporary folder without trainer_state.json
    partial = out / "checkpoints" / ".tmp-step-00000006"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    resumed = mmssl("train", str(recipe), "train.resume_from=latest", "train.max_steps=6", env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert not partial.exists()
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004", "step-00000006"]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_in_sync(tmp_path, cli_env, launcher):
    out = tmp_path / launcher
    recipe = write_recipe(tmp_path / "r.yaml", lm_recipe(out, "mlm", max_steps=6, save_every=3))
    if launcher == "torchrun":
        cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    cmd += ["-m", "mmssl", "train", str(recipe)]
    done = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert len(metrics["parameter_checksums"]) == 2 and metrics["parameters_in_sync"]
    state = json.loads((list_checkpoints(out)[-1] / "trainer_state.json").read_text())
    assert state["step"] == 6
    assert sorted(p.name for p in list_checkpoints(out)[-1].glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
