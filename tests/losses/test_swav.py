"""SwAV's Sinkhorn-Knopp codes: uniform marginals, and the same codes from 2 processes (real torchrun, gloo) as
from 1 process with both halves of the batch; the swapped-prediction loss against its formula."""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mmssl.losses.swav import sinkhorn, swapped_prediction

REPO = Path(__file__).resolve().parents[2]
B, K = 24, 6


def scores(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(2 * B, 16), dim=1)
    prototypes = torch.nn.functional.normalize(torch.randn(K, 16), dim=1)
    return z @ prototypes.t() + 0.3 * (torch.arange(K) == 0)  # prototype 0 favoured: equipartition has work to do


def test_codes_are_distributions_that_split_the_batch_equally():
    s = scores()
    naive = torch.softmax(s / 0.05, dim=1)
    assert naive.sum(dim=0)[0] > 2 * naive.sum(dim=0).mean()  # without Sinkhorn one prototype takes most
    q = sinkhorn(s, epsilon=0.05, iterations=3)
    assert torch.allclose(q.sum(dim=1), torch.ones(2 * B), atol=1e-5)  # each sample's code sums to 1
    naive_spread = naive.sum(dim=0).max() / naive.sum(dim=0).min()
    spread = q.sum(dim=0).max() / q.sum(dim=0).min()
    assert spread < naive_spread / 3, (spread, naive_spread)  # 3 iterations (SwAV's default) already even it out
    tight = sinkhorn(s, epsilon=0.05, iterations=50).sum(dim=0)
    assert torch.allclose(tight, torch.full((K,), 2 * B / K), rtol=1e-3), tight  # converged: uniform marginal
    assert (q >= 0).all() and torch.equal(q.argmax(dim=1), sinkhorn(s, 0.05, 3).argmax(dim=1))


def test_swapped_prediction_matches_its_formula():
    s = scores()
    codes = sinkhorn(s[:B])
    other = s[B:]
    expected = -sum(float((codes[i] * torch.log_softmax(other[i] / 0.1, dim=0)).sum()) for i in range(B)) / B
    assert abs(float(swapped_prediction(codes, other, 0.1)) - expected) < 1e-5


def worker(outfile: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    q = sinkhorn(scores()[rank * B : (rank + 1) * B], epsilon=0.05, iterations=3)
    parts = [torch.empty_like(q) for _ in range(2)]
    dist.all_gather(parts, q)
    if rank == 0:
        torch.save(torch.cat(parts), outfile)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see tests/losses/test_nt_xent.py: gloo may abort at interpreter exit


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_give_the_codes_of_one_process_with_the_whole_batch(tmp_path):
    out = tmp_path / "codes.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    two = torch.load(out)
    one = sinkhorn(scores(), epsilon=0.05, iterations=3)
    assert torch.allclose(two, one, atol=1e-6)
    per_half = torch.cat([sinkhorn(scores()[:B]), sinkhorn(scores()[B:])])
    assert not torch.allclose(per_half, one, atol=1e-3)  # without the all-reduce the codes would differ


if __name__ == "__main__":
    worker(sys.argv[1])
