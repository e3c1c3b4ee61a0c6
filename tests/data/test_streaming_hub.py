"""Streaming a dataset from a Hub server: `data.source: hub` with `data.streaming: true` reads the repo's data
files through `datasets.load_dataset(..., streaming=True)` against the local test Hub (tests/hub_server.py, a
real HTTP server on 127.0.0.1), with every row read once per pass, processes reading disjoint rows, and a
saved loader position resuming exactly where it stopped."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers import PYTHON, ROOT

ROWS = [f"hub row {i:02d}: a sentence about item {i}" for i in range(60)]
# 60 rows over 3 parquet files (3 shards do not divide among 2 processes, which split them by example) and, in a
# second repo, over 2 (one file per process)
FILES = {"org/stream-text": 3, "org/stream-halves": 2}

# Runs in a subprocess with the Hub env (huggingface_hub and datasets read HF_ENDPOINT when imported).
SCRIPT = r"""
import json, sys

from mmssl.config import DataConfig
from mmssl.data.stream_sources import data_sources
from mmssl.data.streaming import SampleStream, Transform, make_loader

repo, other, total = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Texts(Transform):
    def __call__(self, record):
        return [record["text"]]


cfg = DataConfig(source="hub", path=repo, split="train", streaming=True)
sources = data_sources(cfg, "text")
assert len(sources) == 1, sources
hub = list(sources[0].hub)


def read(batches, rank=0, world_size=1, state=None, batch_size=4, cfg=cfg):
    stream = SampleStream(data_sources(cfg, "text"), Texts(), seed=0)
    stream.place(rank, world_size)
    loader = make_loader(stream, batch_size, list, 0)
    if state is not None:
        loader.load_state_dict(state)
    texts = []
    for i, batch in enumerate(loader):
        texts += batch
        if i + 1 == batches:
            break
    return texts, loader.state_dict()


first, _ = read(total // 4 * 2)                 # two passes over all rows (the stream is endless)
ranks = [read(total // 2 // 5 * 2, rank=r, world_size=2, batch_size=5)[0] for r in (0, 1)]  # two passes each
halves_cfg = DataConfig(source="hub", path=other, split="train", streaming=True)
halves = [read(total // 2 // 5 * 2, rank=r, world_size=2, batch_size=5, cfg=halves_cfg)[0] for r in (0, 1)]
unbroken, _ = read(25)                          # across the end of the first pass (15 batches)
head, state = read(7)
state = json.loads(json.dumps(state))           # what a checkpoint would store survives JSON
tail, _ = read(18, state=state)
print("RESULT " + json.dumps({"hub": hub, "first": first, "ranks": ranks, "halves": halves, "unbroken": unbroken,
                              "head": head, "tail": tail}))
"""


def hub_env(hub, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_secret_token", "HF_HOME": str(tmp_path / "hf-home"),
                "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"})
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(proxy, None)
    return env


def upload_dataset(hub, tmp_path, repo_id: str, files: int) -> list[str]:
    """`ROWS` as `files` parquet files (a "text" and an "index" column) in a new dataset repo on the local Hub,
    through the real client; returns the files' paths in the repo."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi

    folder = tmp_path / repo_id.replace("/", "--")
    (folder / "data").mkdir(parents=True)
    per = len(ROWS) // files
    names = []
    for f in range(files):
        name = f"data/train-{f:05d}-of-{files:05d}.parquet"
        rows = ROWS[f * per : (f + 1) * per]
        pq.write_table(pa.table({"text": rows, "index": [f * per + i for i in range(len(rows))]}), folder / name)
        names.append(name)
    api = HfApi(endpoint=hub.url, token="hf_test_secret_token")
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", commit_message="rows")
    return names


def assert_disjoint_halves(per_rank: list[list[str]]) -> None:
    """Two processes, two passes each: each reads its own half of the rows once per pass, the halves are
    disjoint and together every row, and the next pass gives each process the same rows again."""
    half = len(ROWS) // 2
    mine = [texts[:half] for texts in per_rank]
    assert all(len(m) == half and len(set(m)) == half for m in mine), [len(set(m)) for m in mine]
    assert not set(mine[0]) & set(mine[1])
    assert set(mine[0]) | set(mine[1]) == set(ROWS)
    for texts, m in zip(per_rank, mine):
        assert len(texts) == 2 * half and sorted(texts[half:]) == sorted(m)


@pytest.mark.slow
def test_a_hub_dataset_streams_once_per_pass_splits_across_processes_and_resumes_exactly(hub, tmp_path):
    names = {repo_id: upload_dataset(hub, tmp_path, repo_id, files) for repo_id, files in FILES.items()}
    for repo_id, paths in names.items():
        assert sorted(hub.files(repo_id, kind="datasets")) == paths
        assert set(paths) <= hub.state.repos[("datasets", repo_id)].lfs_paths
    hub.state.requests.clear()
    repo_id, other = FILES

    done = subprocess.run([PYTHON, "-c", SCRIPT, repo_id, other, str(len(ROWS))], env=hub_env(hub, tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    got = json.loads(lines[-1][len("RESULT "):])

    # the data came from the server: every data file of both repos was downloaded from it
    resolved = {path for method, path in hub.state.requests if method == "GET" and "/resolve/" in path}
    for repo, paths in names.items():
        for name in paths:
            assert any(p.startswith(f"/datasets/{repo}/resolve/") and p.endswith(name) for p in resolved), (
                repo, name, sorted(resolved))
    assert got["hub"] == [repo_id, "train", None]

    # one process: every row exactly once in the first pass, and again in the next (the stream is endless)
    first, second = got["first"][: len(ROWS)], got["first"][len(ROWS):]
    assert len(first) == len(ROWS) and sorted(first) == sorted(ROWS)
    assert len(second) == len(ROWS) and sorted(second) == sorted(ROWS)

    # two processes read disjoint rows that together are all of them: split by example (3 files) and by file (2)
    assert_disjoint_halves(got["ranks"])
    assert_disjoint_halves(got["halves"])

    # a restored loader continues with exactly the rows an unbroken one yields next (across a pass boundary)
    unbroken, head, tail = got["unbroken"], got["head"], got["tail"]
    assert len(unbroken) == 25 * 4 and len(head) == 7 * 4 and len(tail) == 18 * 4
    assert head == unbroken[: len(head)]
    assert tail == unbroken[len(head):]
    assert tail[0] != unbroken[0]  # the restored loader did not start over
