"""Negative sources for contrastive losses: cross-process gather, a MoCo queue, momentum encoders.

* :func:`gather_with_grad` - in-batch negatives from every process, with gradient (open_clip's
  ``gather_features``); :func:`local_slice_offset` gives the ``label_offset`` of the local rows.
* :class:`EmbeddingQueue` - FIFO of past keys (MoCo, He et al. 2020).
* :func:`momentum_update` / :func:`make_momentum_copy` / :func:`cosine_momentum` - EMA target
  encoders (MoCo; BYOL, Grill et al. 2020).
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "world_size",
    "rank",
    "gather_with_grad",
    "gather_no_grad",
    "local_slice_offset",
    "EmbeddingQueue",
    "momentum_update",
    "make_momentum_copy",
    "cosine_momentum",
]


def _distributed(group=None) -> bool:
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
    loss exactly (see ``tests/losses/test_negatives.py``). Every process must pass the same shape.
    Returns ``x`` itself when not distributed (or world size 1).
    """
    if not _distributed(group):
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
    if not _distributed(group):
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


class EmbeddingQueue(nn.Module):
    """FIFO queue of detached embeddings used as extra negatives (MoCo, He et al. 2020).

    The storage ``queue`` [size, dim] and the write pointer ``ptr`` / fill count ``filled`` are
    registered buffers, so ``state_dict()`` (and therefore checkpoints) carry the queue.
    :attr:`negatives` is the filled part of the storage (ring-buffer order, not age order; order does
    not matter to a loss). It is a view: call :meth:`enqueue` after ``backward()`` (MoCo's order),
    or autograd reports the in-place change. Under distributed training enqueue the *gathered*
    keys (:func:`gather_no_grad`) so every process holds the same queue (DDP broadcasts buffers
    from rank 0 by default anyway).
    """

    queue: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, dim: int, size: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"EmbeddingQueue needs dim >= 1 and size >= 1, got dim={dim}, size={size}")
        self.dim, self.size = int(dim), int(size)
        self.register_buffer("queue", torch.zeros(size, dim, dtype=dtype))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, x: Tensor) -> None:
        """Append the rows of ``x`` [N, dim] (detached), overwriting the oldest when full."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"enqueue expects [N, {self.dim}] embeddings, got {list(x.shape)}")
        x = x.detach().to(self.queue.dtype)
        if x.shape[0] > self.size:  # only the newest `size` rows survive
            x = x[-self.size :]
        n = x.shape[0]
        ptr = int(self.ptr)
        first = min(n, self.size - ptr)
        self.queue[ptr : ptr + first] = x[:first]
        if first < n:  # wrap around
            self.queue[: n - first] = x[first:]
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    @property
    def negatives(self) -> Tensor:
        """The stored embeddings [filled, dim] (a view of the buffer)."""
        return self.queue[: int(self.filled)]

    def __len__(self) -> int:
        return int(self.filled)

    @torch.no_grad()
    def reset(self) -> None:
        self.queue.zero_()
        self.ptr.zero_()
        self.filled.zero_()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}, filled={int(self.filled)}"


def make_momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False`` everywhere: the EMA / momentum target."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float, *, buffers: bool = False) -> None:
    r"""EMA of the online weights into the target: :math:`\theta_t \leftarrow m\,\theta_t + (1-m)\,\theta_o`.

    (MoCo, He et al. 2020; BYOL, Grill et al. 2020.) ``m=1`` leaves the target unchanged, ``m=0``
    copies the online weights. With ``buffers=True`` floating-point buffers (BatchNorm statistics)
    are averaged the same way and the others copied; by default buffers are left alone.
    Uses the fused ``torch._foreach_lerp_``.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    on = dict(online.named_parameters())
    tg = dict(target.named_parameters())
    if on.keys() != tg.keys():
        missing = sorted(set(on) ^ set(tg))[:5]
        raise ValueError(f"online and target modules have different parameters (e.g. {missing}); build the target "
                         "with make_momentum_copy(online)")
    names = list(on)
    for n in names:
        if on[n].shape != tg[n].shape:
            raise ValueError(f"parameter {n!r} has shape {list(on[n].shape)} online but {list(tg[n].shape)} in target")
    if names:
        torch._foreach_lerp_([tg[n].data for n in names], [on[n].data.to(tg[n].dtype) for n in names], 1.0 - m)
    if buffers:
        ob, tb = dict(online.named_buffers()), dict(target.named_buffers())
        for n, t in tb.items():
            if n not in ob:
                continue
            if t.is_floating_point():
                t.lerp_(ob[n].to(t.dtype), 1.0 - m)
            else:
                t.copy_(ob[n])


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (cos(pi * step / total) + 1) / 2``."""
    if total_steps <= 0:
        return final
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
