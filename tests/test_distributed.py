"""Negative sources: gather (single and two real processes)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmssl.distributed import gather_no_grad, gather_with_grad, local_slice_offset

WORKER = Path(__file__).with_name("_gather_worker.py")
REPO = Path(__file__).resolve().parents[1]


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert gather_no_grad(x) is x
    assert local_slice_offset(x) == 0 and local_slice_offset(5) == 0


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


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_really_ran(two_process_results):
    assert two_process_results["world_size"] == 2
    assert two_process_results["ranks"] == [0, 1]


@pytest.mark.slow
@pytest.mark.multiprocess
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
