"""Captions: one row's captions cleaned from whatever its source holds, an image-text table's captions tokenised
once, and the draw of one caption per image and step."""

from __future__ import annotations

from typing import Any

import torch

from mmssl.errors import DataError


def clean_captions(value: Any, column: str = "captions", where: str = "data") -> list[str]:
    """Non-empty captions of one row (a string, a list of strings, or a record with captions); nulls count as
    none; any other type is a clear error naming the column."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        value = value.get("captions") or value.get("caption") or value.get("text") or []
        return clean_captions(value, column, where)
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        if not isinstance(item, str):
            kind = type(item).__name__ + (" lists" if items is value else " values")
            raise DataError(f"{where}: caption column {column!r} holds {kind}, not text; map the column that holds "
                            "the captions with data.columns.captions=<column name>, or write them as strings")
        if item.strip():
            out.append(item.strip())
    return out



class Captions:
    """All captions tokenised once: example i owns rows ``start[i] : start[i] + count[i]`` of ``tokens``."""

    def __init__(self, captions: list[list[str]], tokenizer, chunk: int = 4096):
        flat = [c for caps in captions for c in caps]
        self.texts = flat
        self.tokens = torch.cat([tokenizer(flat[i : i + chunk]) for i in range(0, len(flat), chunk)])
        self.count = torch.tensor([len(c) for c in captions], dtype=torch.long)
        self.start = torch.cumsum(self.count, 0) - self.count

    def sample(self, index: torch.Tensor, random: bool) -> torch.Tensor:
        """Tokens of one caption per example (`rows` of the same draw: `sample_rows`)."""
        return self.tokens[self.sample_rows(index, random)]

    def sample_rows(self, index: torch.Tensor, random: bool) -> torch.Tensor:
        return caption_rows(self.start[index], self.count[index], random)


def caption_rows(start: torch.Tensor, count: torch.Tensor, random: bool) -> torch.Tensor:
    """One caption row per example that owns rows ``start : start + count``: a random one or the first."""
    if not random:
        return start
    return start + (torch.rand(count.shape[0], device=count.device) * count).long().clamp_max(count - 1)
