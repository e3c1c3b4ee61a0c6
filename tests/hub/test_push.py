"""`mmssl.hub.push`: publishing through the real huggingface_hub client to a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml
from helpers import PYTHON, ROOT, lm_recipe

from mmssl.errors import MmsslError
from mmssl.hub import push_model
from mmssl.recipes import parse_recipe
from mmssl.train.loop import train


@pytest.fixture(scope="module")
def mlm_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm") / "run"
    train(parse_recipe(lm_recipe(out, "mlm", max_steps=6, eval_every=0, save_every=3)))
    return out


def client_env(hub, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_secret_token", "HF_HOME": str(tmp_path / "hf-home"),
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)})
    return env


@pytest.mark.slow
def test_push_mlm_round_trip_through_the_real_clients(mlm_output, hub, tmp_path):
    env = client_env(hub, tmp_path)
    done = subprocess.run([PYTHON, "-m", "mmssl", "push", str(mlm_output), "--repo-id", "org/mlm-world",
                           "--license", "apache-2.0"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "hf_test_secret_token" not in done.stdout + done.stderr
    assert not (mlm_output / "README.md").exists()  # the card is uploaded from memory, never written into the folder
    stored = hub.files("org/mlm-world")
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "recipe.yaml", "metrics.json"} <= set(stored)
    assert not any(p.startswith(("checkpoints/", "tracking/")) or p.endswith((".bin", ".pkl")) for p in stored)
    assert stored["model.safetensors"] == (mlm_output / "model.safetensors").read_bytes()  # byte-equal (via LFS)
    assert "model.safetensors" in hub.state.repos[("models", "org/mlm-world")].lfs_paths
    repo = hub.state.repos[("models", "org/mlm-world")]
    assert len(repo.commits) == 1 and "Upload mlm model" in repo.commits[0]["title"]
    card = stored["README.md"].decode()
    assert "hf_test_secret_token" not in card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "fill-mask"
    assert "mlm" in meta["tags"] and meta["license"] == "apache-2.0"
    results = meta["model-index"][0]["results"]
    metrics = json.loads((mlm_output / "metrics.json").read_text())
    reported = {m["type"]: m["value"] for r in results for m in r["metrics"]}
    assert reported["perplexity"] == pytest.approx(metrics["eval"]["perplexity"])
    # the card's own usage snippet runs against the server and loads the model by repo id
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    ran = subprocess.run([PYTHON, "-c", snippet], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "score" in ran.stdout
    load = ("import torch; from transformers import AutoModelForMaskedLM; "
            "m = AutoModelForMaskedLM.from_pretrained('org/mlm-world'); "
            "print(sum(p.double().sum().item() for p in m.state_dict().values()))")
    remote = subprocess.run([PYTHON, "-c", load], env=env, capture_output=True, text=True, timeout=120)
    local = subprocess.run([PYTHON, "-c", load.replace("'org/mlm-world'", repr(str(mlm_output)))],
                           env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout.strip() == local.stdout.strip()


@pytest.mark.slow
def test_existing_repo_needs_overwrite_and_revisions_are_branches(mlm_output, hub, tmp_path):
    env = client_env(hub, tmp_path)
    api_kwargs = {"endpoint": hub.url, "token": "t"}
    push_model(mlm_output, "org/m", backoff=0.01, **api_kwargs)
    with pytest.raises(MmsslError, match="already exists and has files; pass --overwrite"):
        push_model(mlm_output, "org/m", backoff=0.01, **api_kwargs)
    push_model(mlm_output, "org/m", overwrite=True, revision="v2", commit_message="second", backoff=0.01, **api_kwargs)
    repo = hub.state.repos[("models", "org/m")]
    assert [c["branch"] for c in repo.commits] == ["main", "v2"] and repo.commits[1]["title"] == "second"
    assert set(repo.branches["v2"]) == set(repo.branches["main"])


@pytest.mark.slow
def test_server_errors_are_retried_then_reported(mlm_output, hub):
    hub.state.fail["commit"] = 1
    result = push_model(mlm_output, "org/retry", endpoint=hub.url, token="t", backoff=0.01)
    assert result.attempts == 2
    assert len(hub.state.repos[("models", "org/retry")].commits) == 1
    hub.state.fail["commit"] = 10
    with pytest.raises(MmsslError, match="failed after 3 attempt\\(s\\).*Nothing was published"):
        push_model(mlm_output, "org/broken", endpoint=hub.url, token="t", backoff=0.01)
    assert hub.state.repos[("models", "org/broken")].commits == []


@pytest.mark.slow
def test_bad_input_fails_before_any_request(mlm_output, hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(MmsslError, match="is not 'namespace/name'"):
        push_model(mlm_output, "no-namespace", endpoint=hub.url, token="t")
    with pytest.raises(MmsslError, match="is not a finished mmssl output folder"):
        push_model(tmp_path, "org/x", endpoint=hub.url, token="t")
    with pytest.raises(MmsslError, match="no Hugging Face token"):
        push_model(mlm_output, "org/x", endpoint=hub.url)
    assert hub.state.requests == []


@pytest.mark.slow
def test_push_mined_dataset_and_load_it_back(hub, tmp_path):
    env = client_env(hub, tmp_path)
    mined = tmp_path / "mined.jsonl"
    done = subprocess.run([PYTHON, "-m", "mmssl", "mine", str(ROOT / "configs/mine_world_bm25.yaml"),
                           f"output={mined}", "data.world.num_scenes=150"], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    pushed = subprocess.run([PYTHON, "-m", "mmssl", "push", str(mined), "--repo-id", "org/mined"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    files = hub.files("org/mined", kind="datasets")
    assert sorted(files) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert len(hub.state.repos[("datasets", "org/mined")].commits) == 1  # shards and card in one commit
    card = files["README.md"].decode()
    assert "False-negative guards" in card and "removed_relative_score" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert {f["name"] for f in meta["dataset_info"]["features"]} >= {"anchor", "positive", "negative_1"}
    stats = json.loads((tmp_path / "mined.jsonl.stats.json").read_text())
    assert f"{stats['rows_written']} rows written" in card
    load = ("import json; from datasets import load_dataset; d = load_dataset('org/mined', split='train'); "
            "print(json.dumps(d.to_list()))")
    loaded = subprocess.run([PYTHON, "-c", load], env=env, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    local = [json.loads(line) for line in mined.read_text().splitlines()]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == local


def test_large_datasets_are_sharded_and_an_overwrite_leaves_no_stale_shards(hub, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmssl.hub import push_dataset

    rows = [{"anchor": f"query {i}", "positive": f"answer {i}", "negative_1": f"other {i}", "negative_1_score": i / 7}
            for i in range(300)]
    mined = tmp_path / "mined.jsonl"
    mined.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "mined.jsonl.stats.json").write_text(json.dumps(
        {"method": "bm25", "queries": 300, "rows_written": 300, "corpus_size": 600, "num_negatives": 1, "counts": {},
         "config": "skip_top: 0\nwindow: 10\n"}))
    first = push_dataset(mined, "org/sharded", endpoint=hub.url, token="t", max_shard_bytes=5_000, backoff=0.01)
    shards = [f for f in first.files if f.startswith("data/")]
    assert len(shards) > 2 and shards[0] == f"data/train-00000-of-{len(shards):05d}.parquet"
    stored = hub.files("org/sharded", kind="datasets")
    assert [r for s in shards for r in pq.read_table(pa.BufferReader(stored[s])).to_pylist()] == rows
    push_dataset(mined, "org/sharded", endpoint=hub.url, token="t", overwrite=True, backoff=0.01)
    assert sorted(hub.files("org/sharded", kind="datasets")) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert len(hub.state.repos[("datasets", "org/sharded")].commits) == 2


@pytest.mark.slow
def test_recipe_push_to_hub_at_checkpoints_and_at_the_end(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret_token")
    raw = lm_recipe(tmp_path / "run", "clm", max_steps=4, save_every=2)
    raw["push_to_hub"] = {"repo_id": "org/clm-live", "endpoint": hub.url, "every_checkpoint": True}
    train(parse_recipe(raw))
    repo = hub.state.repos[("models", "org/clm-live")]
    titles = [c["title"] for c in repo.commits]
    assert titles[:2] == ["Checkpoint at step 2 (mmssl)", "Checkpoint at step 4 (mmssl)"]
    assert titles[-1].startswith("Upload model trained with mmssl (clm, 4 steps)")
    assert repo.branches["main"]["model.safetensors"] == (tmp_path / "run" / "model.safetensors").read_bytes()
    assert not (tmp_path / "run" / ".tmp-push").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("MMSSL_LIVE_HUB") == "1" and os.environ.get("HF_TOKEN")),
                    reason="live Hub test: opt in with MMSSL_LIVE_HUB=1 and HF_TOKEN (needs internet)")
def test_live_push_to_the_real_hub(mlm_output, monkeypatch):  # pragma: no cover - opt-in, needs internet
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    api = HfApi(endpoint="https://huggingface.co")
    repo_id = f"{api.whoami()['name']}/mmssl-live-test"
    result = push_model(mlm_output, repo_id, api=api, private=True, overwrite=True, backoff=2.0)
    assert "model.safetensors" in api.list_repo_files(repo_id) and result.files
    api.delete_repo(repo_id)
