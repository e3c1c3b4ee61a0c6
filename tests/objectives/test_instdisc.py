"""InstDisc: the memory bank follows the embeddings of the images seen (and no other row moves) with NCE's log Z
estimated once, and on two real processes a sharded bank trains exactly as a replicated one."""

from __future__ import annotations

import pytest

import json
import math

import torch
from clirun import write_recipe
from image_ssl_recipes import image_objective, image_recipe


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_sharded_memory_bank_trains_exactly_as_a_replicated_one_on_two_processes(tmp_path):
    """InstDisc on two real processes: with the bank sharded each process holds half the rows, and the run ends
    with exactly the weights and the (gathered) bank of the same run with the bank replicated on both."""
    import subprocess

    from clirun import cli_env
    from helpers import PYTHON
    from safetensors.torch import load_file

    runs = {}
    for shard in (True, False):
        out = tmp_path / f"shard-{shard}"
        raw = image_recipe(out, "instdisc", num_negatives=32, shard_bank=shard, eval_before=False,
                           linear_probe=False)
        raw["train"].update(save_every=6)
        recipe = write_recipe(tmp_path / f"r-{shard}.yaml", raw)
        done = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "mmssl", "train", str(recipe)], env=cli_env(), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["processes"] == 2 and metrics["parameters_in_sync"]
        runs[shard] = (metrics, load_file(str(out / "checkpoints/step-00000006/model.safetensors")))
    (sharded, a), (replicated, b) = runs[True], runs[False]
    assert sharded["bank_rows"] == replicated["bank_rows"] == 160  # one row per training image
    assert sharded["bank_rows_per_process"] == 80 and replicated["bank_rows_per_process"] == 160
    assert a.keys() == b.keys() and a["bank.features"].shape == (160, 16)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


@pytest.mark.slow
def test_instdisc_bank_follows_the_embeddings_of_the_images_seen(tmp_path):
    """After a step, the bank rows of the batch's images moved towards their new embeddings (momentum 0.5) and
    no other row moved; log Z was estimated once and stays fixed."""
    torch.manual_seed(0)
    obj = image_objective(tmp_path, "instdisc", num_negatives=16)
    module = obj.module.train()
    before = module.bank.features.clone()
    index = torch.tensor([3, 5, 11, 2])
    view = obj.views.view(obj.train.images[index], index, 0, 0, 0).contiguous(memory_format=torch.channels_last)
    out = obj.step_loss(module, {"view1": view, "index": index})
    query = out["embedding"]
    expected = torch.nn.functional.normalize(0.5 * before[index] + 0.5 * query, dim=1)
    assert torch.allclose(module.bank.features[index], expected, atol=1e-6)
    others = torch.ones(len(before), dtype=torch.bool)
    others[index] = False
    assert torch.equal(module.bank.features[others], before[others])
    log_z = float(module.log_z)
    assert math.isfinite(log_z)
    obj.step_loss(module, {"view1": view, "index": index})
    assert float(module.log_z) == log_z
