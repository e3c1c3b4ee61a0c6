"""Momentum (EMA) target networks and the MoCo feature queue: model state, not losses.

* :func:`make_momentum_copy` / :func:`momentum_update` - the EMA target encoder of MoCo (He et al.
  2020) and BYOL (Grill et al. 2020).
* :func:`cosine_momentum` - BYOL's schedule of the EMA rate from ``base`` up to ``final``.
* :class:`EmbeddingQueue` - FIFO of past keys used as extra negatives (MoCo); a registered buffer,
  so it is checkpointed with the module that owns it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = ["EmbeddingQueue", "make_momentum_copy", "momentum_update", "cosine_momentum"]


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
    r"""BYOL's EMA schedule: :math:`\tau_k = f - (f - \tau_{base})(\cos(\pi k / K) + 1) / 2`.

    With ``final = 1`` this is the paper's :math:`1 - (1 - \tau_{base})(\cos(\pi k/K) + 1)/2`: ``base`` at
    step 0, ``(base + final) / 2`` at ``K/2``, ``final`` at ``K`` (and after; negative steps give ``base``).
    ``total_steps <= 0`` (no schedule known) returns ``final``.
    """
    for name, v in (("base", base), ("final", final)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"momentum {name} must be in [0, 1], got {v}")
    if total_steps <= 0:
        return final
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
