"""Modality-agnostic views: nothing here knows that the input is an image beyond its being a grid of values.

* `patch_mask`: masking as a view (SimCSE's dropout on tokens, applied to image patches): a fixed fraction
  of each view's ``patch`` x ``patch`` cells is set to the mean pixel (zero after normalisation);
* `mixup`: DACL (Verma et al. 2021, "Towards Domain-Agnostic Contrastive Learning"): a view becomes
  ``lam * x + (1 - lam) * x_other`` with ``lam ~ U(alpha, 1)`` and ``x_other`` another input of the batch.

Each takes its random numbers as arguments, so `TwoViews` can feed counter-based draws (a function of seed,
epoch, row and view) and `BatchImageViews` torch's global RNG. `mask_draws` / `mixup_draws` make the former.
"""

from __future__ import annotations

import math

import torch

from mmssl.data.image_views.rng import view_uniforms

# The `view` argument of `view_uniforms` for these draws is the view's stream with one of these bits set, so
# they never coincide with a preset's draws (streams 0, 1, 2 + small crop) and adding them changes none.
MASK_STREAM, MIXUP_STREAM = 1 << 20, 1 << 21


def patch_side(size: int, patch: int | None) -> int:
    """The mask's cell side in pixels: `patch`, or by default an eighth of the view (at least 1)."""
    return max(1, min(patch or size // 8, size))


def grid_cells(size: int, patch: int) -> int:
    """Cells of the mask grid of a ``size`` x ``size`` view (edge cells are cut off where `patch` does not
    divide `size`)."""
    return math.ceil(size / patch) ** 2


def patch_mask(noise: torch.Tensor, ratio: float, size: int, patch: int) -> torch.Tensor:
    """``[B, 1, size, size]`` booleans, True where masked: per image the ``round(ratio * cells)`` cells with the
    smallest `noise` (``[B, cells]`` uniforms), so every image has exactly that many masked cells."""
    b, cells = noise.shape
    side = math.ceil(size / patch)
    if cells != side * side:
        raise ValueError(f"patch_mask: noise has {cells} columns, the grid {side * side} cells")
    count = round(ratio * cells)
    rank = noise.argsort(dim=1).argsort(dim=1)
    grid = (rank < count).view(b, 1, side, side)
    grid = grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return grid[:, :, :size, :size]


def mask_draws(rows: torch.Tensor, epoch: int, seed: int, stream: int, size: int, patch: int) -> torch.Tensor:
    """The mask noise of view `stream` of `rows`: ``[B, cells]`` uniforms from (seed, epoch, row, stream)."""
    return view_uniforms(rows, epoch, seed, MASK_STREAM | stream, draws=grid_cells(size, patch))


def partners(keys: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Each row's mixing partner, a batch position: rows are ranked by `keys` (their row ids), and row ``i``
    takes the row ``1 + floor(offset[i] * (B - 1))`` ranks after it (cyclically), so never itself when the
    batch has two rows or more. The partner depends on which rows share the batch, not on their order."""
    b = keys.shape[0]
    order = keys.argsort(stable=True)
    rank = order.argsort()
    step = 1 + (offset * (b - 1)).floor().long().clamp(max=max(b - 2, 0))
    return order[(rank + step) % b]


def mixup(x: torch.Tensor, partner: torch.Tensor, apply: torch.Tensor, lam_u: torch.Tensor,
          alpha: float) -> torch.Tensor:
    """DACL mixup: where `apply`, ``lam * x + (1 - lam) * x[partner]`` with ``lam = alpha + (1 - alpha) * lam_u``
    (``lam_u`` uniform in [0, 1), so ``lam ~ U(alpha, 1)``); elsewhere `x` unchanged."""
    if x.shape[0] < 2:
        return x
    lam = (alpha + (1 - alpha) * lam_u.to(x)).view(-1, 1, 1, 1)
    lam = torch.where(apply.to(x.device).view(-1, 1, 1, 1), lam, torch.ones_like(lam))
    return lam * x + (1 - lam) * x[partner.to(x.device)]


def mixup_draws(rows: torch.Tensor, epoch: int, seed: int, stream: int) -> torch.Tensor:
    """``[B, 3]`` uniforms of view `stream` of `rows`: whether to mix, lambda, partner offset."""
    return view_uniforms(rows, epoch, seed, MIXUP_STREAM | stream, draws=3)
