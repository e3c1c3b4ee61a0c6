"""Ranking metrics from a query x candidate score matrix: recall@k, MRR@k and nDCG@k."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _relevance(relevant: torch.Tensor | Sequence[Sequence[int]], shape: tuple[int, int], device) -> torch.Tensor:
    """Boolean [Q, C] matrix; `relevant` is one candidate index per query or a list of index lists."""
    rel = torch.zeros(shape, dtype=torch.bool, device=device)
    if isinstance(relevant, torch.Tensor) and relevant.ndim == 1:
        rel[torch.arange(shape[0], device=device), relevant.to(device)] = True
        return rel
    for row, items in enumerate(relevant):
        rel[row, list(items)] = True
    return rel


@torch.no_grad()
def retrieval_metrics(
    scores: torch.Tensor,
    relevant: torch.Tensor | Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 5, 10),
    prefix: str = "",
) -> dict[str, float]:
    """Recall@k (a relevant candidate in the top k), MRR@10 and nDCG@10 (binary gains), averaged over queries.

    `scores` is [Q, C] (higher is better); `relevant` gives, per query, the index of its relevant candidate
    or a list of relevant candidate indices.
    """
    q, c = scores.shape
    rel = _relevance(relevant, (q, c), scores.device)
    depth = min(max(max(ks), 10), c)
    top = scores.topk(depth, dim=1).indices
    hits = rel.gather(1, top).float()  # [Q, depth]
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}recall@{k}"] = hits[:, : min(k, c)].amax(1).mean().item()
    ranks = torch.arange(1, depth + 1, device=scores.device, dtype=torch.float32)
    first = torch.where(hits[:, :10].any(1), hits[:, :10].argmax(1).float() + 1, torch.full((q,), float("inf"), device=scores.device))
    out[f"{prefix}mrr@10"] = (1.0 / first).mean().item()
    discounts = 1.0 / torch.log2(ranks[:10] + 1)
    dcg = (hits[:, :10] * discounts[: hits[:, :10].shape[1]]).sum(1)
    ideal_hits = rel.sum(1).clamp(max=10)
    idcg = torch.stack([discounts[: int(n)].sum() for n in ideal_hits]) if q else torch.zeros(0)
    out[f"{prefix}ndcg@10"] = (dcg / idcg.clamp(min=1e-12)).mean().item()
    return out
