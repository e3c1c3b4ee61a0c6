"""Shaping the negatives of InfoNCE, for every objective built on `mmssl.losses.info_nce`:

* **MoCHi** (Kalantidis et al. 2020, "Hard Negative Mixing for Contrastive Learning"): for each query, the
  ``hardest`` negatives it already has (in-batch, queue, memory bank, mined) are mixed into ``pairs`` synthetic
  negatives ``a h_i + (1 - a) h_j`` (a ~ U(0, 1)) and ``query_mixes`` ones ``b q + (1 - b) h_k`` with
  b ~ U(0, ``query_max``), b < 0.5 so that the point stays nearer the negative; L2-normalised, no gradient.
* **Debiased contrastive loss** (Chuang et al. 2020): the negatives' term corrected for false negatives drawn
  with class prior ``tau_plus``: ``Ng = max((S - tau_plus N e^{pos}) / (1 - tau_plus), N e^{-s})``.
* **Hardness-weighted negatives** (Robinson et al. 2021, "Contrastive Learning with Hard Negative Samples"):
  each negative's ``e^{l}`` weighted by ``e^{beta l} / mean(e^{beta l})`` (``beta`` 0: uniform).

All of it works on logits ``l = s * cos`` (s the logit scale, 1/T) and in log space, so CLIP's scale of 100 does
not overflow. With every option at 0 `info_nce` never calls this module: the loss is exactly the plain one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.schema import NonNegativeFloat, NonNegativeInt, Range


@dataclass
class NegativeShaping:
    """MoCHi, debiasing and hardness weighting for an InfoNCE loss (all off by default)."""

    mochi_hardest: NonNegativeInt = 0  # N: the hardest negatives of each query that synthetic ones are mixed from
    mochi_pairs: NonNegativeInt = 0  # s: mixes of two hard negatives per query
    mochi_query: NonNegativeInt = 0  # s': mixes of the query with a hard negative per query
    mochi_query_max: Annotated[float, Range(0, 0.5, open_low=True)] = 0.5  # the query's share: U(0, this)
    tau_plus: Annotated[float, Range(0, 1, open_high=True)] = 0.0  # debiased: P(a negative shares the class)
    beta: NonNegativeFloat = 0.0  # hardness weighting: concentration on hard negatives (0: uniform)

    def __post_init__(self) -> None:
        for name in ("mochi_hardest", "mochi_pairs", "mochi_query"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"negative_shaping.{name} must be an integer >= 0, got {value!r}")
        if (self.mochi_pairs or self.mochi_query) and self.mochi_hardest < (2 if self.mochi_pairs else 1):
            raise ValueError("negative_shaping.mochi_pairs / mochi_query mix the hardest negatives: set "
                             "negative_shaping.mochi_hardest (e.g. 64; at least 2 for pairs)")
        if not 0 < self.mochi_query_max <= 0.5:
            raise ValueError(f"negative_shaping.mochi_query_max must be in (0, 0.5] (the query's share, drawn "
                             f"below it, stays below the negative's), got {self.mochi_query_max!r}")
        if not 0 <= self.tau_plus < 1:
            raise ValueError(f"negative_shaping.tau_plus must be in [0, 1), got {self.tau_plus!r}")
        if self.beta < 0:
            raise ValueError(f"negative_shaping.beta must be >= 0, got {self.beta!r}")

    @property
    def mixes(self) -> int:
        return self.mochi_pairs + self.mochi_query  # only with mochi_hardest set (__post_init__)

    @property
    def reweights(self) -> bool:
        return self.tau_plus > 0 or self.beta > 0

    @property
    def active(self) -> bool:
        return self.mixes > 0 or self.reweights


@dataclass
class Mixes:
    """Synthetic negatives ``points`` [B, s + s', D] (normalised), with what they were mixed from, for checks:
    ``mixed = weight * first + (1 - weight) * second`` before normalisation (the query mixes' `first` is the
    query, `weight` its share)."""

    points: Tensor
    first: Tensor
    second: Tensor
    weight: Tensor


@torch.no_grad()
def mochi_mixes(query: Tensor, hard: Tensor, pairs: int, query_mixes: int, query_max: float = 0.5) -> Mixes:
    """MoCHi's synthetic negatives for queries ``[B, D]`` from their hard negatives ``[B, N, D]`` (torch's
    global RNG: the trainer seeds it per step, so a resumed run mixes the same)."""
    b, n, d = hard.shape
    rows = torch.arange(b, device=hard.device)[:, None]
    i, j = (torch.randint(n, (b, pairs), device=hard.device) for _ in range(2))
    a = torch.rand(b, pairs, 1, device=hard.device).to(hard.dtype)  # drawn in float32: the same for any dtype
    k = torch.randint(n, (b, query_mixes), device=hard.device)
    share = torch.rand(b, query_mixes, 1, device=hard.device).to(hard.dtype) * query_max
    first = torch.cat([hard[rows, i], query[:, None, :].to(hard.dtype).expand(b, query_mixes, d)], dim=1)
    second = torch.cat([hard[rows, j], hard[rows, k]], dim=1)
    weight = torch.cat([a, share], dim=1)
    mixed = weight * first + (1 - weight) * second
    return Mixes(F.normalize(mixed, dim=-1), first, second, weight)


def mochi_logits(rows: Tensor, cols: Tensor, logits: Tensor, not_negative: Tensor, scale: Tensor | float,
                 shaping: NegativeShaping) -> Tensor:
    """``[B, s + s']`` logits of each row against its synthetic negatives, mixed from its `mochi_hardest`
    highest-scoring columns among its negatives (``not_negative`` marks positives and removed columns)."""
    with torch.no_grad():
        candidates = logits.detach().masked_fill(not_negative, float("-inf"))
        available = int((~not_negative).sum(dim=1).min())
        if available < 1:
            raise ValueError("MoCHi needs at least one negative per query to mix from")
        hard_index = candidates.topk(min(shaping.mochi_hardest, available), dim=1).indices
        dtype = torch.float32 if cols.dtype in (torch.float16, torch.bfloat16) else cols.dtype
        hard = F.normalize(cols.detach().to(dtype), dim=-1)[hard_index]
        points = mochi_mixes(F.normalize(rows.detach().to(dtype), dim=-1), hard, shaping.mochi_pairs,
                             shaping.mochi_query, shaping.mochi_query_max).points
    synthetic = torch.einsum("bd,bkd->bk", rows, points.to(rows.dtype)) * scale
    return synthetic.to(logits.dtype)


def reweighted_loss(logits: Tensor, labels: Tensor, negative: Tensor, scale: Tensor | float,
                    shaping: NegativeShaping) -> Tensor:
    """Per-row debiased / hardness-weighted InfoNCE (Chuang et al. 2020; Robinson et al. 2021), one positive
    per row at ``labels``; ``negative`` marks the columns that count as negatives."""
    pos = logits.gather(1, labels[:, None]).squeeze(1)
    count = negative.sum(dim=1).clamp(min=1).float()
    neg = logits.masked_fill(~negative, float("-inf"))
    if shaping.beta > 0:  # log of sum_j w_j e^{l_j}, w_j = e^{beta l_j} / mean_k e^{beta l_k}
        log_mean_w = torch.logsumexp(shaping.beta * neg, dim=1) - count.log()
        log_sum = torch.logsumexp((1 + shaping.beta) * neg, dim=1) - log_mean_w
    else:
        log_sum = torch.logsumexp(neg, dim=1)
    log_floor = count.log() - torch.as_tensor(scale, dtype=logits.dtype, device=logits.device)  # N e^{-s}
    if shaping.tau_plus > 0:
        ratio = torch.exp(math.log(shaping.tau_plus) + count.log() + pos - log_sum)  # tau+ N e^{pos} / S
        corrected = log_sum + torch.log1p(-ratio.clamp(max=1 - 1e-6)) - math.log(1 - shaping.tau_plus)
        log_ng = torch.where(ratio < 1, torch.maximum(corrected, log_floor), log_floor)
    else:
        log_ng = torch.maximum(log_sum, log_floor)
    return torch.logaddexp(pos, log_ng) - pos
