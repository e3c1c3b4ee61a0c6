"""Negative sources: gather (single and two real processes), queue, momentum encoders."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mmssl.losses import (
    EmbeddingQueue,
    cosine_momentum,
    gather_no_grad,
    gather_with_grad,
    local_slice_offset,
    make_momentum_copy,
    momentum_update,
)

WORKER = Path(__file__).with_name("_gather_worker.py")
REPO = Path(__file__).resolve().parents[2]


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert gather_no_grad(x) is x
    assert local_slice_offset(x) == 0 and local_slice_offset(5) == 0


# ---------------------------------------------------------------- queue


def test_queue_order_and_wrap_around():
    q = EmbeddingQueue(dim=2, size=5)
    assert q.negatives.shape == (0, 2) and len(q) == 0
    rows = torch.arange(20, dtype=torch.float32).view(10, 2)  # row i = [2i, 2i+1]
    q.enqueue(rows[0:3])
    assert torch.equal(q.negatives, rows[0:3]) and int(q.ptr) == 3
    q.enqueue(rows[3:6])  # writes slots 3, 4 then wraps to slot 0
    assert len(q) == 5 and int(q.ptr) == 1
    assert torch.equal(q.negatives, rows[[5, 1, 2, 3, 4]])
    q.enqueue(rows[6:8])
    assert torch.equal(q.negatives, rows[[5, 6, 7, 3, 4]]) and int(q.ptr) == 3
    q.enqueue(rows[0:7])  # more than the queue holds: only the newest 5 rows survive
    assert sorted(q.negatives[:, 0].tolist()) == [4.0, 6.0, 8.0, 10.0, 12.0]
    with pytest.raises(ValueError, match="enqueue expects"):
        q.enqueue(torch.zeros(2, 3))


def test_queue_is_detached_and_state_dict_round_trip():
    q = EmbeddingQueue(dim=3, size=4)
    x = torch.randn(3, 3, requires_grad=True)
    q.enqueue(x)
    assert not q.negatives.requires_grad
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    restored = EmbeddingQueue(dim=3, size=4)
    restored.load_state_dict(torch.load(buf))
    assert torch.equal(restored.negatives, q.negatives) and int(restored.ptr) == 3
    new = torch.randn(2, 3)
    q.enqueue(new)
    restored.enqueue(new)
    assert torch.equal(restored.queue, q.queue) and int(restored.ptr) == int(q.ptr) == 1
    assert set(q.state_dict()) == {"queue", "ptr", "filled"}


# ---------------------------------------------------------------- momentum


def test_momentum_update_formula():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = make_momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(5, 3))  # changes BatchNorm running stats
    before = {n: p.clone() for n, p in target.state_dict().items()}
    momentum_update(online, target, 0.9)
    on = online.state_dict()
    for n, p in target.named_parameters():
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * on[n], atol=1e-6)
    for n, b in target.named_buffers():
        assert torch.equal(b, before[n])  # buffers untouched by default
    momentum_update(online, target, 0.5, buffers=True)
    assert torch.allclose(target[1].running_mean, 0.5 * before["1.running_mean"] + 0.5 * on["1.running_mean"])
    assert int(target[1].num_batches_tracked) == int(on["1.num_batches_tracked"])
    momentum_update(online, target, 0.0)
    for n, p in target.named_parameters():
        assert torch.equal(p, on[n])
    with pytest.raises(ValueError, match="momentum"):
        momentum_update(online, target, 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        momentum_update(online, nn.Linear(3, 4), 0.9)


def test_cosine_momentum():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)


# ---------------------------------------------------------------- two real processes


def _load_worker():
    spec = importlib.util.spec_from_file_location("_gather_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather") / "results.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return torch.load(out)


def test_two_processes_really_ran(two_process_results):
    assert two_process_results["world_size"] == 2
    assert two_process_results["ranks"] == [0, 1]


@pytest.mark.parametrize("scenario", ["local", "local_hard_negatives", "clip", "clip_duplicates", "cached", "cached_ddp"])
def test_two_process_gradients_equal_full_batch(two_process_results, scenario):
    """Mean of per-rank local losses and DDP-averaged grads == one process on the full 2B batch."""
    worker = _load_worker()
    ref_loss, ref_grads = worker.SCENARIOS[scenario]()  # no process group: world 1, full batch
    got = two_process_results[scenario]
    assert torch.allclose(got["loss"], ref_loss, atol=1e-6), (got["loss"], ref_loss)
    assert got["grads"].keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        assert g.abs().sum() > 0
        assert torch.allclose(got["grads"][name], g, atol=1e-6), (scenario, name, got["grads"][name], g)
