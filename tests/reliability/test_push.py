"""`mmssl push` through the real CLI: every request goes to the chosen endpoint, failures are one clear message.

The peer is tests/hub_server.py (a real HTTP server); nothing of the Hub client is mocked. The isolation tests run
the server and the CLI in a network namespace with only loopback (`unshare -n`, root), so a request to any other host
fails, and an audit hook records every socket the CLI opens.
"""

from __future__ import annotations

import json
import socket

import pyarrow.parquet as pq
import pytest
import yaml
from clirun import assert_clear_error, cli_env, mmssl, tree_hashes
from helpers import PYTHON, ROOT, lm_recipe
from hub_server import HubServer

from mmssl.recipes import parse_recipe
from mmssl.train.loop import train

TOKEN = "hf_test_secret_token"
USER_README = "# my notes about this run\n\nwritten by me, not by mmssl\n"
JUNK = ["checkpoints/step_1/optimizer.pt", "tracking/events.log", ".hidden", "cache/.secret", "state.pkl",
        "eval_private.jsonl", "notes/ideas.txt"]  # the last two: the user's own files, which the run did not write


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny MLM run, plus files the user put there (a README.md) and files a push must skip."""
    out = tmp_path_factory.mktemp("push") / "run"
    train(parse_recipe(lm_recipe(out, "mlm", max_steps=2)))
    (out / "README.md").write_text(USER_README)
    for junk in JUNK:
        (out / junk).parent.mkdir(parents=True, exist_ok=True)
        (out / junk).write_text("not for the Hub")
    return out


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A dataset written by `mmssl mine` (with its .stats.json beside it)."""
    path = tmp_path_factory.mktemp("mined") / "mined.jsonl"
    done = mmssl("mine", str(ROOT / "configs/mine_world_bm25.yaml"), f"output={path}", "data.world.num_scenes=60")
    assert done.returncode == 0, done.stderr[-2000:]
    return path


def push_env(tmp_path, **extra: str) -> dict[str, str]:
    """The CLI's environment for a push: no HF_* from the suite (no HF_ENDPOINT, no offline), a fake token."""
    env = {k: v for k, v in cli_env().items() if not k.startswith("HF_")}
    env.update({"HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1",
                "MMSSL_PUSH_BACKOFF": "0.01", **extra})
    return env


def isolated_push(path, repo_id: str, tmp_path):
    """`mmssl push PATH --endpoint <server>` in a network namespace where only loopback and the server exist."""
    out = tmp_path / "isolated"
    prefix = ["unshare", "-n", PYTHON, str(ROOT / "tests/hub_server.py"), str(out), "--"]
    done = mmssl("push", str(path), "--repo-id", repo_id, "--endpoint", "{endpoint}", env=push_env(tmp_path),
                 prefix=prefix, timeout=180)
    assert (out / "hub.json").is_file(), f"the isolated run did not happen (unshare needs root):\n{done.stderr[-3000:]}"
    return done, json.loads((out / "hub.json").read_text()), out / "repos"


def assert_only_the_endpoint(done, record: dict) -> None:
    """Exit 0, the token sent only to the server and never printed, every socket to the server's address."""
    assert done.returncode == 0, done.stderr[-3000:]
    assert TOKEN not in done.stdout + done.stderr
    assert record["tokens"] == [TOKEN]  # it carried the token, and nobody else could have received it
    port = int(record["url"].rsplit(":", 1)[1])
    connects = [target for event, target in record["network"] if event == "socket.connect"]
    lookups = [target for event, target in record["network"] if event == "socket.getaddrinfo"]
    assert connects and all(target == ["127.0.0.1", port] for target in connects), record["network"]
    assert all(host == "127.0.0.1" for host, _ in lookups), record["network"]


@pytest.mark.slow
def test_dataset_push_sends_every_request_to_the_chosen_endpoint(mined, tmp_path):
    before = tree_hashes(mined.parent)
    done, record, repos = isolated_push(mined, "org/mined", tmp_path)
    assert_only_the_endpoint(done, record)
    repo = record["repos"]["datasets/org/mined"]
    assert repo["files"] == ["README.md", "data/train-00000-of-00001.parquet"]
    assert len(repo["commits"]) == 1 and "data/train-00000-of-00001.parquet" in repo["lfs_paths"]
    stored = repos / "datasets/org/mined"
    rows = pq.read_table(stored / "data/train-00000-of-00001.parquet").to_pylist()
    assert rows == [json.loads(line) for line in mined.read_text().splitlines()]
    meta = yaml.safe_load((stored / "README.md").read_text().split("---")[1])
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert [f["name"] for f in meta["dataset_info"]["features"]] == list(rows[0])
    assert meta["dataset_info"]["splits"][0]["num_examples"] == len(rows)
    assert tree_hashes(mined.parent) == before


@pytest.mark.slow
def test_model_push_sends_every_request_to_the_chosen_endpoint(run_dir, tmp_path):
    before = tree_hashes(run_dir)
    done, record, repos = isolated_push(run_dir, "org/mlm", tmp_path)
    assert_only_the_endpoint(done, record)
    stored = repos / "models/org/mlm"
    assert (stored / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    assert len(record["repos"]["models/org/mlm"]["commits"]) == 1
    assert "library_name: transformers" in (stored / "README.md").read_text()
    assert tree_hashes(run_dir) == before


@pytest.mark.slow
def test_push_model_uploads_the_card_from_memory_and_never_touches_the_folder(run_dir, tmp_path):
    before = tree_hashes(run_dir)
    with HubServer() as hub:
        for extra in ([], ["--overwrite"]):
            done = mmssl("push", str(run_dir), "--repo-id", "org/card", "--endpoint", hub.url, *extra,
                         env=push_env(tmp_path), timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
        repo = hub.state.repos[("models", "org/card")]
    assert len(repo.commits) == 2  # one commit per push
    stored = repo.branches["main"]
    card = stored["README.md"].decode()
    assert card.startswith("---\n") and "pipeline_tag: fill-mask" in card and "my notes" not in card
    uploaded = {p for p in before if p not in JUNK and not p.startswith(".")}  # train writes .mmssl-run.json
    assert set(stored) == uploaded and all(stored[p] == (run_dir / p).read_bytes() for p in uploaded - {"README.md"})
    assert tree_hashes(run_dir) == before and (run_dir / "README.md").read_text() == USER_README


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["model", "dataset"])
def test_unreachable_endpoint_is_retried_then_one_clear_message(what, run_dir, mined, tmp_path):
    path = run_dir if what == "model" else mined
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    before = tree_hashes(path)
    done = mmssl("push", str(path), "--repo-id", "org/x", "--endpoint", endpoint, env=push_env(tmp_path), timeout=120)
    assert_clear_error(done, endpoint, "failed after 3 attempt(s)", "Nothing was published", "reachable")
    assert TOKEN not in done.stdout + done.stderr
    assert tree_hashes(path) == before


@pytest.mark.slow
@pytest.mark.parametrize("what", ["model", "dataset"])
def test_offline_mode_refuses_before_any_request(what, run_dir, mined, tmp_path):
    path = run_dir if what == "model" else mined
    before = tree_hashes(path)
    with HubServer() as hub:
        done = mmssl("push", str(path), "--repo-id", "org/x", "--endpoint", hub.url,
                     env=push_env(tmp_path, HF_HUB_OFFLINE="1"), timeout=120)
        assert_clear_error(done, "HF_HUB_OFFLINE=1 is set", "publishing needs the network", "unset it")
        assert hub.state.requests == []
    assert TOKEN not in done.stdout + done.stderr
    assert tree_hashes(path) == before


@pytest.mark.slow
@pytest.mark.parametrize("repo_id, rule", [
    ("org/x..y", "Cannot have -- or .."),
    ("org/x--y", "Cannot have -- or .."),
    ("org/" + "x" * 97, "maximum length is 96"),
    ("no-namespace", "is not 'namespace/name'"),
])
def test_invalid_repo_id_is_refused_before_any_request(repo_id, rule, run_dir, tmp_path):
    before = tree_hashes(run_dir)
    with HubServer() as hub:
        done = mmssl("push", str(run_dir), "--repo-id", repo_id, "--endpoint", hub.url, env=push_env(tmp_path))
        assert_clear_error(done, f"repo id '{repo_id}'", rule, "namespace/name")
        assert hub.state.requests == []
    assert TOKEN not in done.stdout + done.stderr
    assert tree_hashes(run_dir) == before


@pytest.mark.slow
def test_token_echoed_by_a_failing_server_is_never_printed(mined, tmp_path):
    with HubServer() as hub:
        hub.state.echo_auth = True  # its error texts repeat the Authorization header
        hub.state.fail["commit"] = 10
        done = mmssl("push", str(mined), "--repo-id", "org/leak", "--endpoint", hub.url, env=push_env(tmp_path),
                     timeout=120)
        assert_clear_error(done, "failed after 3 attempt(s)", "Bearer <token>", "Nothing was published")
        assert hub.state.tokens == {TOKEN}  # the token did go to the server, and its echo came back
        assert hub.state.repos[("datasets", "org/leak")].commits == []
    assert TOKEN not in done.stdout + done.stderr
