"""Padded batches of token sequences: right-padded to the longest (`pad_sequences`), or length-sorted buckets
each padded to its own longest (`pack_sequences`), and sentence pooling over padded token states (`pool`).

The packed layout (sequences end to end, no padding) is `mmssl.models.packing`, which checks itself against
this one; `mmssl.models.batch_layout` chooses between them for a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

POOLING_MODES: tuple[str, ...] = ("cls", "mean", "last_token")


def pool(hidden: Tensor, attention_mask: Tensor | None, mode: str) -> Tensor:
    """Sentence embeddings [B, H] from token states [B, L, H] (right padding), as sentence-transformers pools."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1, dtype=acc)
        count = mask.sum(dim=1, dtype=acc).clamp(min=1e-9)
        return (summed / count).to(hidden.dtype)
    if mode == "last_token":
        last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad token id lists to the longest: ``input_ids`` and ``attention_mask`` [N, L]."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pack_sequences(seqs: Sequence[Sequence[int]], pad_id: int, group_size: int, sort: bool = True) -> dict[str, Any]:
    """Length-sorted groups of at most `group_size` sequences, each padded to its own longest.

    Returns ``{"groups": [{"input_ids", "attention_mask"}, ...], "restore": LongTensor | None}``;
    ``cat(outputs of groups)[restore]`` is in the original order. ``sort=False`` keeps the original
    order (groups are then consecutive slices, ``restore`` is None): GradCache chunks stay contiguous.
    """
    n = len(seqs)
    if n == 0:
        raise ValueError("cannot pack an empty list of sequences")
    order = sorted(range(n), key=lambda i: len(seqs[i])) if sort else list(range(n))
    groups = [pad_sequences([seqs[i] for i in order[s : s + group_size]], pad_id) for s in range(0, n, group_size)]
    restore = None
    if sort:
        restore = torch.empty(n, dtype=torch.long)
        restore[torch.tensor(order)] = torch.arange(n)
    return {"groups": groups, "restore": restore}
