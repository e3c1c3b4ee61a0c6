"""A decoded table's rows as a dataset of row numbers."""

from __future__ import annotations

import torch


class RowIndices(torch.utils.data.Dataset):
    """Row numbers ``0 .. size - 1``: the trainer's sampler batches them, and the objective gathers and augments
    the rows of its in-memory table in `prepare_batch`, a whole batch at once (no per-example Python work)."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> int:
        return i
