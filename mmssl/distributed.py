"""What a process knows of the others: world size and rank (1 and 0 outside torch.distributed), and gathering
tensors from every process (in-batch negatives, ids, momentum keys).

* :func:`gather_with_grad` - in-batch negatives from every process, with gradient (open_clip's
  ``gather_features``); :func:`local_slice_offset` gives the ``label_offset`` of the local rows.
* :func:`gather_no_grad` - the same without gradient (ids, momentum keys).

The MoCo queue and the momentum (EMA) encoders are model state: :mod:`mmssl.models.momentum`.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "world_size",
    "rank",
    "gather_with_grad",
    "gather_no_grad",
    "local_slice_offset",
]


def is_distributed(group=None) -> bool:
    """Whether torch.distributed runs with more than one process in `group`."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_size(group=None) -> int:
    """World size of ``group``, 1 when torch.distributed is not initialised."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank(group=None) -> int:
    """Rank in ``group``, 0 when torch.distributed is not initialised."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: Tensor, group=None) -> Tensor:
    """Differentiable all-gather along dim 0: ``[B, ...] -> [world * B, ...]`` in rank order.

    The backward pass sums, for the local rows, the gradients of every process's loss
    (``torch.distributed.nn.functional.all_gather``). With DDP-style gradient averaging and a
    per-process mean loss over the local queries, this reproduces the gradient of the full-batch
    loss exactly (see ``tests/test_distributed.py``). Every process must pass the same shape.
    Returns ``x`` itself when not distributed (or world size 1).
    """
    if not is_distributed(group):
        return x
    from torch.distributed.nn.functional import all_gather

    # Deprecated in torch 2.14 in favour of the private functional collectives, whose backward needs
    # reduce_scatter (not available on every backend); this one works on gloo and NCCL alike.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        parts = all_gather(x.contiguous(), group=group)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor, group=None) -> Tensor:
    """Plain all-gather along dim 0 without gradient (ids, queue keys); ``x`` when not distributed."""
    if not is_distributed(group):
        return x
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, x, group=group)
    return torch.cat(out, dim=0)


def local_slice_offset(local_batch: int | Tensor, group=None) -> int:
    """Row of the first local item in the gathered tensor: ``rank * B`` (the ``label_offset`` of ``info_nce``).

    ``local_batch`` is ``B`` or the local tensor itself (``B = len(x)``).
    """
    b = local_batch.shape[0] if isinstance(local_batch, Tensor) else int(local_batch)
    return rank(group) * b
