"""Two-process helper for tests/test_distributed.py (not a test module).

Run as ``python -m torch.distributed.run --standalone --nproc_per_node 2 _gather_worker.py OUTFILE``.
Each scenario computes a loss on this rank's slice of one global batch; rank 0 saves the world size,
the mean loss over ranks and the DDP-style averaged gradients to OUTFILE.

Imported without torch.distributed initialised (world 1), the same scenario functions compute the
single-process full-batch reference, which the test compares against.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from mmssl.losses import (  # noqa: E402
    LearnableTemperature,
    cached_contrastive_backward,
    duplicate_mask,
    info_nce,
    split_batch,
)
from mmssl.distributed import gather_no_grad, gather_with_grad, local_slice_offset  # noqa: E402
from mmssl.distributed import rank as get_rank  # noqa: E402
from mmssl.distributed import world_size as get_world_size  # noqa: E402

TOTAL, DIN, D = 8, 6, 5


def _data(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _local(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0] // get_world_size()
    return x[get_rank() * b : (get_rank() + 1) * b]


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def scenario_local(hard_negatives: bool) -> tuple[torch.Tensor, dict]:
    """Retrieval / SimCSE style: local queries against keys (and hard negatives) of all processes."""
    torch.manual_seed(1)
    enc = nn.Linear(DIN, D)
    q = enc(_local(_data(10, TOTAL, DIN)))
    k = gather_with_grad(enc(_local(_data(11, TOTAL, DIN))))
    neg = gather_with_grad(enc(_local(_data(12, TOTAL, DIN)))) if hard_negatives else None
    loss = info_nce(q, k, temperature=0.1, extra_negatives=neg, label_offset=local_slice_offset(q))
    loss.backward()
    return loss.detach(), _grads(enc)


def scenario_clip(duplicates: bool) -> tuple[torch.Tensor, dict]:
    """CLIP local loss: image_i vs all texts and text_i vs all images, learnable temperature."""
    torch.manual_seed(2)
    model = nn.ModuleDict(
        {"img": nn.Linear(DIN, D), "txt": nn.Linear(DIN + 1, D), "temp": LearnableTemperature(0.1)}
    )
    img = model["img"](_local(_data(20, TOTAL, DIN)))
    txt = model["txt"](_local(_data(21, TOTAL, DIN + 1)))
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
    offset = local_slice_offset(img)
    mask = None
    if duplicates:  # caption ids with duplicates across the two ranks' halves
        ids = _local(torch.tensor([0, 1, 2, 3, 1, 4, 0, 5]))
        mask = duplicate_mask(ids, gather_no_grad(ids), label_offset=offset)
    loss = info_nce(img, all_txt, all_queries=all_img, symmetric=True, logit_scale=model["temp"](),
                    label_offset=offset, false_negative_mask=mask)
    loss.backward()
    return loss.detach(), _grads(model)


def _encoder() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(DIN, 16), nn.Tanh(), nn.Linear(16, D))


def scenario_cached(ddp: bool) -> tuple[torch.Tensor, dict]:
    """GradCache (chunks of 2) with keys gathered inside loss_fn; optionally a DDP-wrapped encoder."""
    enc = _encoder()
    model = enc
    no_sync = None
    if ddp and get_world_size() > 1:
        model = nn.parallel.DistributedDataParallel(enc)
        no_sync = model.no_sync
    xq, xk = _local(_data(30, TOTAL, DIN)), _local(_data(31, TOTAL, DIN))

    def loss_fn(q, k):
        return info_nce(q, gather_with_grad(k), temperature=0.1, label_offset=local_slice_offset(q))

    loss = cached_contrastive_backward(
        loss_fn, [(model, split_batch(xq, 2)), (model, split_batch(xk, 2))], no_sync=no_sync
    )
    return loss, _grads(enc)


SCENARIOS = {
    "local": lambda: scenario_local(False),
    "local_hard_negatives": lambda: scenario_local(True),
    "clip": lambda: scenario_clip(False),
    "clip_duplicates": lambda: scenario_clip(True),
    "cached": lambda: scenario_cached(False),
    "cached_ddp": lambda: scenario_cached(True),
}
# DDP averages the gradients itself; the others are averaged by hand as DDP would.
SELF_AVERAGING = {"cached_ddp"}


def main(outfile: str) -> None:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    results: dict = {"world_size": world, "ranks": gather_no_grad(torch.tensor([dist.get_rank()])).tolist()}
    for name, fn in SCENARIOS.items():
        loss, grads = fn()
        loss = loss.clone()
        dist.all_reduce(loss)
        for g in grads.values():
            if name not in SELF_AVERAGING:
                dist.all_reduce(g)
                g /= world
        results[name] = {"loss": loss / world, "grads": grads}
    if dist.get_rank() == 0:
        torch.save(results, outfile)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo's shutdown occasionally aborts the interpreter's own exit after the results are saved
