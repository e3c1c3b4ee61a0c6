"""Streamed training: `mmssl prepare` shards, SIGKILL and resume to the same weights (two loader workers; the packed
text stream's exact resume is tested key by key in tests/data/test_streaming.py), resume refused on another worker
count, two torchrun nodes over shards that do not divide between them, the streamed and whole-data paths learning
alike, streamed SimCSE and clear refusals."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from clirun import cli_env, straight_and_resumed, write_recipe
from helpers import PYTHON, lm_recipe

from mmssl.errors import DataError, RecipeError
from mmssl.recipes import parse_recipe
from mmssl.train.loop import train

TINY_RESNET = {"channels": [8, 8, 16, 16], "small_stem": True}


@pytest.fixture(scope="module")
def world_shards(tmp_path_factory):
    """The built-in world's images as 3 WebDataset shards (160, 160 and 80 images) with sizes.json, written by
    `mmssl prepare`'s library function."""
    from mmssl.config import DataConfig, WorldConfig
    from mmssl.prepare import prepare

    out = tmp_path_factory.mktemp("shards") / "images"
    data = DataConfig(source="world", world=WorldConfig(num_scenes=400, image_size=64, pair_fraction=0.0))
    assert prepare(data, str(out), "images", shard_size=160)["shards"] == 3
    return out


def image_recipe(output_dir, shards, **train) -> dict:
    return {
        "name": "test-stream", "output_dir": str(output_dir), "seed": 0,
        "data": {"source": "files", "path": str(shards / "shard-{00000..00002}-0000.tar"), "streaming": True,
                 "shuffle_buffer": 0},
        "model": {"arch": "resnet18", "config": dict(TINY_RESNET)},
        "objective": {"name": "simclr", "image_size": 16, "projection_dim": 16, "hidden_dim": 32, "eval_before": False,
                      "linear_probe": False},
        "train": {"batch_size": 16, "learning_rate": 3e-3, "max_steps": 16, "log_every": 4, "progress": False,
                  "cpu": True, "num_workers": 2, **train},
    }


@pytest.mark.slow
def test_a_killed_image_stream_resumes_to_the_same_weights(tmp_path, world_shards):
    """Two loader workers decode the shards; a run SIGKILLed after a checkpoint and resumed continues at each
    worker's position, so its weights equal an unbroken run's."""
    raw = image_recipe(tmp_path / "unused", world_shards, max_steps=16, save_every=4, keep_checkpoints=10)
    a, b, killed_at = straight_and_resumed(write_recipe(tmp_path / "r.yaml", raw), tmp_path, 4, 16)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    broken = tmp_path / "broken"
    metrics = json.loads((broken / "metrics.json").read_text())
    assert metrics["train_images"] == "streamed" and metrics["skipped_samples"] == {}
    # 400 images / 16 per step: 25 steps an epoch (from sizes.json), so 16 steps are 0.64 of it
    log = [json.loads(line) for line in (broken / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log if e["event"] == "train"][-1] == pytest.approx(16 / 25)
    # a stream's position is per loader worker: another worker count is refused, not silently reshuffled
    raw["output_dir"] = str(broken)
    raw["train"].update(resume_from="latest", max_steps=20, num_workers=1)
    with pytest.raises(DataError, match=r"train.num_workers=2.*train.num_workers=1.*resume with the same numbers"):
        train(parse_recipe(raw))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_nodes_stream_shards_that_do_not_divide_between_them(tmp_path, world_shards):
    """Two `torchrun --nnodes 2` launches (a static rendezvous on 127.0.0.1), one process each, over 3 shards:
    node 0 reads 2 shards, node 1 the third; both take the same number of steps (the stream is endless), so
    nobody waits forever in a collective, and the weights end equal."""
    import socket

    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", image_recipe(out, world_shards, max_steps=12, num_workers=1))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [subprocess.Popen([PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "mmssl", "train", str(recipe)], env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    results = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-2000:] for _, err in results]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["parameters_in_sync"] and metrics["steps"] == 12
    assert metrics["stream_shards_per_process"] == [2, 1]
    assert metrics["examples_seen_per_process"] == 12 * 16


@pytest.mark.slow
def test_the_streamed_and_whole_data_paths_learn_alike(tmp_path):
    """The same MLM recipe on the same text, read whole and streamed (shard order, no buffer): the same
    tokenizer and block packing, so the eval loss after training agrees closely."""
    losses = {}
    for streaming in (False, True):  # in one process: `tokenizers` trains the same vocabulary both times
        raw = lm_recipe(tmp_path / f"run-{streaming}", max_steps=30)
        raw["data"].update(streaming=streaming, shuffle_buffer=0)
        losses[streaming] = train(parse_recipe(raw))["eval"]["loss"]
    first = json.loads((tmp_path / "run-False" / "log.jsonl").read_text().splitlines()[1])["loss"]
    assert losses[True] < first - 1.0 and losses[False] < first - 1.0  # both learned
    assert abs(losses[True] - losses[False]) < 0.15, losses


@pytest.mark.slow
def test_streamed_data_of_unknown_size_needs_a_step_count(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a red circle\n" * 50)
    raw = lm_recipe(tmp_path / "run")
    raw["data"] = {"source": "files", "path": str(corpus), "streaming": True}
    raw["train"].pop("max_steps")
    with pytest.raises(RecipeError, match=r"streamed and its size is unknown: set train.max_steps.*mmssl prepare"):
        train(parse_recipe(raw))


@pytest.mark.slow
@pytest.mark.parametrize("method, objective", [("instdisc", {"num_negatives": 16}),
                                               ("simclr", {"bank_negatives": 16})])
def test_a_method_that_needs_every_image_refuses_a_stream(tmp_path, world_shards, method, objective):
    raw = image_recipe(tmp_path / "run", world_shards)
    raw["objective"] = {"name": method, "image_size": 16, **objective}
    with pytest.raises(RecipeError, match=f"{method}' cannot train on streamed data.*data.streaming=false"):
        train(parse_recipe(raw))


@pytest.mark.slow
def test_simcse_streams_pairs_and_counts_the_rows_it_cannot_use(tmp_path):
    """Supervised SimCSE on a JSON Lines stream, tokenised in a loader worker; a row without a positive is
    skipped and counted, not a crash."""
    from mmssl.config import WorldConfig
    from mmssl.data.world import world_columns

    pairs = world_columns(WorldConfig(num_scenes=200), "pairs")
    rows = [{"anchor": a, "positive": p} for a, p in zip(pairs["anchor"], pairs["positive"])]
    rows[3]["positive"] = ""
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    raw = lm_recipe(tmp_path / "run", max_steps=30, num_workers=1)
    raw["data"] = {"source": "files", "path": str(tmp_path / "pairs.jsonl"), "streaming": True}
    raw["objective"] = {"name": "simcse", "mode": "supervised", "max_length": 32, "pooling": "mean", "temperature": 0.05}
    metrics = train(parse_recipe(raw))
    assert metrics["train_rows"] == "streamed"
    assert metrics["skipped_samples"] == {"empty or missing 'positive'": 1, "malformed line": 1}
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert losses[-1] < losses[0]
