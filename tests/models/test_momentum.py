"""Momentum (EMA) targets, BYOL's momentum schedule and the MoCo queue."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from mmssl.models.momentum import EmbeddingQueue, cosine_momentum, make_momentum_copy, momentum_update

# ---------------------------------------------------------------- schedule


def test_cosine_momentum_values():
    k = 100
    assert cosine_momentum(0, k) == pytest.approx(0.996)
    assert cosine_momentum(k // 2, k) == pytest.approx(0.998)
    assert cosine_momentum(k, k) == pytest.approx(1.0)
    # BYOL: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
    assert cosine_momentum(25, k, base=0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(k // 2, k, base=0.99, final=0.999) == pytest.approx(0.9945)
    values = [cosine_momentum(s, k) for s in range(k + 1)]
    assert values == sorted(values) and values[1] > values[0]  # rises monotonically from the first step


def test_cosine_momentum_edges():
    assert cosine_momentum(150, 100) == pytest.approx(1.0)  # clamped after the end
    assert cosine_momentum(-5, 100) == pytest.approx(0.996)
    assert cosine_momentum(3, 0, final=0.999) == 0.999  # no schedule: the final value
    with pytest.raises(ValueError, match="base"):
        cosine_momentum(0, 10, base=1.5)
    with pytest.raises(ValueError, match="final"):
        cosine_momentum(0, 10, final=-0.1)


# ---------------------------------------------------------------- EMA update


def test_momentum_copy_is_frozen_and_independent():
    online = nn.Linear(3, 2)
    target = make_momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        online.weight.add_(1.0)
    assert not torch.equal(online.weight, target.weight)


def test_momentum_update_formula():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = make_momentum_copy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(5, 3))  # changes BatchNorm running stats
    before = {n: p.clone() for n, p in target.state_dict().items()}
    momentum_update(online, target, 0.9)
    on = online.state_dict()
    for n, p in target.named_parameters():
        assert not torch.allclose(before[n], on[n])
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * on[n], atol=1e-6)
    for n, b in target.named_buffers():
        assert torch.equal(b, before[n])  # buffers untouched by default
    momentum_update(online, target, 0.5, buffers=True)
    assert torch.allclose(target[1].running_mean, 0.5 * before["1.running_mean"] + 0.5 * on["1.running_mean"])
    assert int(target[1].num_batches_tracked) == int(on["1.num_batches_tracked"])  # integer buffers copied
    momentum_update(online, target, 1.0)  # m = 1: unchanged
    momentum_update(online, target, 0.0)  # m = 0: a copy
    for n, p in target.named_parameters():
        assert torch.equal(p, on[n])
    with pytest.raises(ValueError, match="momentum"):
        momentum_update(online, target, 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        momentum_update(online, nn.Linear(3, 4), 0.9)


# ---------------------------------------------------------------- queue


def test_queue_fifo_and_wrap_around():
    q = EmbeddingQueue(dim=2, size=5)
    assert q.negatives.shape == (0, 2) and len(q) == 0
    rows = torch.arange(20, dtype=torch.float32).view(10, 2)  # row i = [2i, 2i+1]
    q.enqueue(rows[0:3])
    assert torch.equal(q.negatives, rows[0:3]) and int(q.ptr) == 3
    q.enqueue(rows[3:6])  # writes slots 3, 4 then wraps to slot 0, overwriting the oldest (row 0)
    assert len(q) == 5 and int(q.ptr) == 1
    assert torch.equal(q.negatives, rows[[5, 1, 2, 3, 4]])
    q.enqueue(rows[6:8])  # the oldest now are rows 1 and 2
    assert torch.equal(q.negatives, rows[[5, 6, 7, 3, 4]]) and int(q.ptr) == 3
    q.enqueue(rows[0:7])  # more than the queue holds: only the newest 5 rows survive
    assert sorted(q.negatives[:, 0].tolist()) == [4.0, 6.0, 8.0, 10.0, 12.0]
    q.reset()
    assert len(q) == 0 and int(q.ptr) == 0
    with pytest.raises(ValueError, match="enqueue expects"):
        q.enqueue(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="size >= 1"):
        EmbeddingQueue(dim=2, size=0)


def test_queue_is_a_detached_buffer_checkpointed_with_its_module():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(3, 3)
            self.queue = EmbeddingQueue(dim=3, size=4)

    model = Model()
    x = torch.randn(3, 3, requires_grad=True)
    model.queue.enqueue(x * 2)
    assert not model.queue.negatives.requires_grad
    assert {n for n, _ in model.named_parameters()} == {"encoder.weight", "encoder.bias"}  # not trained
    assert {"queue.queue", "queue.ptr", "queue.filled"} <= set(model.state_dict())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    restored = Model()
    restored.load_state_dict(torch.load(buf))
    assert torch.equal(restored.queue.negatives, model.queue.negatives) and int(restored.queue.ptr) == 3
    new = torch.randn(2, 3)
    model.queue.enqueue(new)
    restored.queue.enqueue(new)
    assert torch.equal(restored.queue.queue, model.queue.queue) and int(restored.queue.ptr) == 1
    assert model.double().queue.queue.dtype == torch.float64  # moves with the module
