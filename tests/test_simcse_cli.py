"""End-to-end runs of the `simcse` recipes through the real CLI (tiny BERTs, a few steps): the output
folder loads with SentenceTransformer and reproduces mmssl's embeddings; `mmssl eval` works; a two-process
run really has two processes; MoCo checkpoints carry the queue; bad recipes fail with one line."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
TINY = ("model.config={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
        "max_position_embeddings: 64}")
TEXTS = ["a red circle on the left", "there is a blue square at the top", "a green star below a red cross"]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cli(*args: str, launcher: list[str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable, "-m", "mmssl"]) + list(args)
    return subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def overrides(out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", TINY, "data.world.num_scenes=200", "tokenizer.vocab_size=300",
            "objective.max_length=32", "train.progress=false", "train.batch_size=16", "train.eval_every=0",
            "train.log_every=1", *extra]


@pytest.mark.slow
def test_unsupervised_recipe_exports_a_sentence_transformer(tmp_path):
    from sentence_transformers import SentenceTransformer

    from mmssl.models.text_encoder import load_sentence_transformer_dir

    out = tmp_path / "unsup"
    done = cli("train", "configs/simcse_unsup_world.yaml", *overrides(out, "train.max_steps=3"))
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "simcse" and metrics["steps"] == 3 and metrics["mode"] == "unsupervised"
    assert {"recall@1", "sts_spearman", "alignment", "uniformity", "effective_rank", "mi_lower_bound"} <= set(metrics["eval"])
    assert "recall@1" in metrics["eval_before"]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("mi_lower_bound" in row for row in logged if row["event"] == "train")

    encoder, tok, max_length = load_sentence_transformer_dir(out)
    ours = encoder.encode(TEXTS, tok, max_length)
    st = SentenceTransformer(str(out), device="cpu")
    assert (st.encode(TEXTS, convert_to_tensor=True) - ours).abs().max().item() < 1e-5

    evaluated = cli("eval", str(out))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout)
    assert abs(result["recall@1"] - metrics["eval"]["recall@1"]) < 1e-6


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_run(tmp_path):
    """torchrun with 2 processes: in-batch negatives gathered from both (label_offset = rank * B)."""
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "mmssl"]
    done = cli("train", "configs/simcse_sup_world.yaml",
               *overrides(out, "train.max_steps=3", "train.save_every=0", "train.batch_size=8",
                          "objective.eval_before=false"), launcher=launcher, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics.get("parameters_in_sync", True) is True
    assert metrics["steps"] == 3 and "recall@1" in metrics["eval"]


@pytest.mark.slow
def test_moco_checkpoint_carries_queue_and_momentum_encoder(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "moco"
    done = cli("train", "configs/simcse_moco_world.yaml",
               *overrides(out, "train.max_steps=2", "train.save_every=2", "objective.queue_size=64",
                          "objective.eval_before=false"))
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = out / "checkpoints" / "step-00000002"
    state = load_file(str(checkpoint / "model.safetensors"))
    assert int(state["queue.filled"]) == 32 and int(state["queue.ptr"]) == 32
    assert state["queue.queue"][:32].abs().sum() > 0 and state["queue.queue"][32:].abs().sum() == 0
    assert any(k.startswith("key_encoder.") for k in state)
    resumed = cli("train", "configs/simcse_moco_world.yaml",
                  *overrides(out, "train.max_steps=3", "train.save_every=3", "objective.queue_size=64",
                             "objective.eval_before=false", "train.resume_from=latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = load_file(str(out / "checkpoints" / "step-00000003" / "model.safetensors"))
    assert int(state["queue.filled"]) == 48  # resumed with the saved queue, not an empty one


@pytest.mark.slow
def test_bad_input_is_one_line(tmp_path):
    """The CLI prints one line for a user error (the other bad inputs are tested in tests/objectives)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"anchor": f"a {i}", "positive": f"b {i}"}) for i in range(30)))
    extra = ["objective.mode=unsupervised", "data.source=files", f"data.path={pairs}"]
    message = "column 'text' (role 'text') not found"
    done = cli("train", "configs/simcse_sup_world.yaml", *overrides(tmp_path / "bad", "train.max_steps=1", *extra))
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("mmssl: error:") and message in lines[-1], done.stderr[-3000:]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_text_views_recipe_resumes_exactly(tmp_path):
    """On-the-fly views depend on (seed, epoch, row) only: a run stopped after its first epoch and resumed
    ends with the same weights as an uninterrupted one (3 steps per epoch; the resume starts epoch 1)."""
    # a constant learning rate: the stopped run's schedule must not depend on its shorter max_steps
    common = ["data.max_examples=48", "train.save_every=3", "objective.eval_before=false",
              "train.scheduler=constant", "train.warmup_ratio=0"]
    first = cli("train", "configs/simcse_views_world.yaml", *overrides(tmp_path / "part", "train.max_steps=3", *common))
    assert first.returncode == 0, first.stderr[-3000:]
    # the same vocabulary for both runs (tokenizers' WordPiece trainer breaks ties per process)
    pinned = f"tokenizer.path={tmp_path / 'part'}"
    whole = cli("train", "configs/simcse_views_world.yaml",
                *overrides(tmp_path / "whole", "train.max_steps=6", pinned, *common))
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed = cli("train", "configs/simcse_views_world.yaml",
                  *overrides(tmp_path / "part", "train.max_steps=6", "train.resume_from=latest", *common))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "part"))
    assert a["steps"] == b["steps"] == 6 and a["parameter_checksums"] == b["parameter_checksums"]
    assert [v["name"] for v in a["text_views"]] == ["synonym", "insert"]
    logged = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    changed = [row["views_changed"] for row in logged if row["event"] == "train"]
    assert len(changed) == 6 and min(changed) > 0.5
