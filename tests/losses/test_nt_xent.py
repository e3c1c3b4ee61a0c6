"""NT-Xent (SimCLR) and the MoCo v2/v3 losses against naive loops, and 2 real processes == 1 process.

Run as a script under torchrun this file is its own 2-process worker:
``python -m torch.distributed.run --standalone --nproc_per_node 2 test_nt_xent.py OUTFILE``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmssl.distributed import gather_no_grad
from mmssl.losses import moco_v2_loss, moco_v3_loss, nt_xent
from mmssl.distributed import rank as get_rank
from mmssl.distributed import world_size as get_world_size

REPO = Path(__file__).resolve().parents[2]


def rand(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_(grad)


def naive_nt_xent(z1, z2, temperature):
    """Per-row loss over the 2N views [z1; z2]: positive (i + N) mod 2N, every other view but i a negative."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n2 = z.shape[0]
    out = []
    for i in range(n2):
        sims = torch.stack([z[i] @ z[j] for j in range(n2)]) / temperature
        others = torch.stack([sims[j] for j in range(n2) if j != i])
        out.append(torch.logsumexp(others, 0) - sims[(i + n2 // 2) % n2])
    return torch.stack(out)


def naive_nt_xent_with_bank(z1, z2, bank, temperature):
    """As `naive_nt_xent`, every bank entry one more negative of every row."""
    z, b = F.normalize(torch.cat([z1, z2]), dim=-1), F.normalize(bank, dim=-1)
    n2 = z.shape[0]
    out = []
    for i in range(n2):
        others = [z[i] @ z[j] / temperature for j in range(n2) if j != i] + [z[i] @ e / temperature for e in b]
        out.append(torch.logsumexp(torch.stack(others), 0) - z[i] @ z[(i + n2 // 2) % n2] / temperature)
    return torch.stack(out)


def naive_ce(q, cols, positive, temperature):
    """-log softmax(q_i . cols / T)[positive[i]] per row, normalised vectors."""
    q, cols = F.normalize(q, dim=-1), F.normalize(cols, dim=-1)
    logits = q @ cols.T / temperature
    return torch.stack([torch.logsumexp(logits[i], 0) - logits[i, positive[i]] for i in range(len(q))])


# ---------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_naive_values_and_gradients(temperature):
    z1, z2 = rand(5, 4, seed=1, grad=True), rand(5, 4, seed=2, grad=True)
    got = nt_xent(z1, z2, temperature, reduction="none")
    ref = naive_nt_xent(z1, z2, temperature)
    assert got.shape == (10,)
    assert torch.allclose(got, ref, atol=1e-10)
    mean = nt_xent(z1, z2, temperature)
    assert torch.allclose(mean, ref.mean(), atol=1e-10)
    g_got = torch.autograd.grad(mean, (z1, z2))
    g_ref = torch.autograd.grad(ref.mean(), (z1, z2))
    for a, b in zip(g_got, g_ref):
        assert b.abs().sum() > 0 and torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(nt_xent(z1, z2, temperature, reduction="sum"), ref.sum(), atol=1e-9)
    assert torch.allclose(nt_xent(z1, z2, temperature, gather=False), mean)  # world 1: gather is a no-op


def test_nt_xent_with_bank_negatives_matches_naive_and_the_bank_gets_no_gradient():
    z1, z2, bank = rand(4, 3, seed=1, grad=True), rand(4, 3, seed=2, grad=True), rand(6, 3, seed=3, grad=True)
    got = nt_xent(z1, z2, 0.5, extra_negatives=bank, reduction="none")
    assert torch.allclose(got, naive_nt_xent_with_bank(z1, z2, bank, 0.5), atol=1e-10)
    assert not torch.allclose(got, nt_xent(z1, z2, 0.5, reduction="none"))  # the entries count
    got.mean().backward()
    assert bank.grad is None and z1.grad.abs().sum() > 0


def test_nt_xent_hand_value_for_two_orthogonal_pairs():
    # pair 0 = e0 (both views), pair 1 = e1 (both views): each row has sims 1 (positive), 0, 0 to the others.
    e = torch.eye(2, dtype=torch.float64)
    t = 0.5
    expected = -torch.log(torch.exp(torch.tensor(1 / t)) / (torch.exp(torch.tensor(1 / t)) + 2))
    assert torch.allclose(nt_xent(e, e.clone(), t), expected.double())


def test_nt_xent_errors():
    with pytest.raises(ValueError, match="no negatives"):
        nt_xent(rand(1, 3), rand(1, 3))
    with pytest.raises(ValueError, match="equal shapes"):
        nt_xent(rand(3, 4), rand(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(rand(3, 4), rand(3, 4), 0.0)


# ---------------------------------------------------------------- MoCo v2


@pytest.mark.parametrize("in_batch", [False, True])
def test_moco_v2_matches_naive_and_keys_get_no_gradient(in_batch):
    q, k, queue = rand(4, 3, seed=1, grad=True), rand(4, 3, seed=2, grad=True), rand(6, 3, seed=3, grad=True)
    got = moco_v2_loss(q, k, queue, 0.2, in_batch_negatives=in_batch, reduction="none")
    if in_batch:  # columns: all keys, then the queue; positive k_i
        ref = naive_ce(q, torch.cat([k, queue]), list(range(4)), 0.2)
    else:  # MoCo: columns [k_i, queue], positive at 0
        ref = torch.stack([naive_ce(q[i : i + 1], torch.cat([k[i : i + 1], queue]), [0], 0.2)[0] for i in range(4)])
    assert torch.allclose(got, ref, atol=1e-10)
    got.mean().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_moco_v2_differs_from_in_batch_and_empty_queue():
    q, k, queue = rand(4, 3, seed=1), rand(4, 3, seed=2), rand(6, 3, seed=3)
    assert not torch.allclose(moco_v2_loss(q, k, queue), moco_v2_loss(q, k, queue, in_batch_negatives=True))
    empty = queue[:0]
    with pytest.raises(ValueError, match="queue is empty"):
        moco_v2_loss(q, k, empty)
    assert torch.allclose(moco_v2_loss(q, k, empty, in_batch_negatives=True),
                          naive_ce(q, k, list(range(4)), 0.2).mean(), atol=1e-10)


# ---------------------------------------------------------------- MoCo v3


def test_moco_v3_matches_official_formula():
    q1, q2 = rand(4, 3, seed=1, grad=True), rand(4, 3, seed=2, grad=True)
    k1, k2 = rand(4, 3, seed=3, grad=True), rand(4, 3, seed=4, grad=True)
    t = 0.2
    plain = naive_ce(q1, k2, range(4), t).mean() + naive_ce(q2, k1, range(4), t).mean()
    got = moco_v3_loss(q1, q2, k1, k2, t)
    assert torch.allclose(got, 2 * t * plain, atol=1e-10)  # official code: CE * 2T per term, summed
    assert torch.allclose(moco_v3_loss(q1, q2, k1, k2, t, scale_by_temperature=False), plain, atol=1e-10)
    got.backward()
    assert q1.grad.abs().sum() > 0 and q2.grad.abs().sum() > 0
    assert k1.grad is None and k2.grad is None
    with pytest.raises(ValueError, match="equal shapes"):
        moco_v3_loss(q1, q2[:3], k1, k2)


# ---------------------------------------------------------------- two real processes

TOTAL, DIN, D = 8, 6, 5


def _data(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _local(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0] // get_world_size()
    return x[get_rank() * b : (get_rank() + 1) * b]


def _run(seed: int, loss_fn) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Loss on this rank's slice; returns (loss, parameter grads, gradients of all rows / world size)."""
    torch.manual_seed(seed)
    enc, key_enc = nn.Linear(DIN, D), nn.Linear(DIN, D)
    x1, x2 = _local(_data(seed + 10, TOTAL, DIN)), _local(_data(seed + 11, TOTAL, DIN))
    z1, z2 = enc(x1), enc(x2)
    z1.retain_grad()
    z2.retain_grad()
    with torch.no_grad():
        k1, k2 = key_enc(x1), key_enc(x2)
    loss = loss_fn(z1, z2, k1, k2)
    loss.backward()
    rows = torch.cat([gather_no_grad(z1.grad), gather_no_grad(z2.grad)]) / get_world_size()
    return loss.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}, rows


SCENARIOS = {
    "nt_xent": lambda: _run(1, lambda z1, z2, k1, k2: nt_xent(z1, z2, 0.3)),
    "moco_v3": lambda: _run(2, lambda z1, z2, k1, k2: moco_v3_loss(z1, z2, k1, k2, 0.2)),
}


def worker(outfile: str) -> None:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    results: dict = {"world_size": world}
    for name, fn in SCENARIOS.items():
        loss, grads, rows = fn()
        dist.all_reduce(loss)
        for g in grads.values():  # DDP averaging
            dist.all_reduce(g)
            g /= world
        results[name] = {"loss": loss / world, "grads": grads, "rows": rows}
    if dist.get_rank() == 0:
        torch.save(results, outfile)
    dist.barrier()
    dist.destroy_process_group()
    # torch 2.14 + gloo sometimes aborts at interpreter exit ("terminate called without an active
    # exception", ~1 run in 6 here) after everything is saved; skip the interpreter teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("nt_xent") / "results.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_processes_equal_one_process_with_twice_the_batch(two_process_results, scenario):
    """Mean of per-rank losses, DDP-averaged grads and every row's gradient == one process on the 2N batch."""
    assert two_process_results["world_size"] == 2
    ref_loss, ref_grads, ref_rows = SCENARIOS[scenario]()  # no process group: world 1, full batch
    got = two_process_results[scenario]
    assert torch.allclose(got["loss"], ref_loss, atol=1e-6), (got["loss"], ref_loss)
    assert ref_rows.shape == got["rows"].shape == (2 * TOTAL, D)
    assert ref_rows.abs().sum() > 0 and torch.allclose(got["rows"], ref_rows, atol=1e-6)
    for name, g in ref_grads.items():
        assert g.abs().sum() > 0 and torch.allclose(got["grads"][name], g, atol=1e-6), (name, got["grads"][name], g)


if __name__ == "__main__":
    worker(sys.argv[1])
