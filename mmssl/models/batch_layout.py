"""How a step's token sequences reach a text encoder: one layout per run, chosen once for the model and device.

* ``packed`` - end to end in a few rows with a block-diagonal mask (`mmssl.models.packing`): one pass per
  batch, no work on padding; only where the model gives the same embeddings packed (probed by `choose_layout`).
* ``buckets`` - length-sorted buckets, each padded to its own longest (`mmssl.models.padding`): one pass each;
  what a CPU gets when the model cannot be packed.
* ``padded`` - one pass padded to the longest: what a GPU gets then (many small passes cost more than padding).

`BatchLayout.group` lays a list of sequences out as `TextEncoder.forward(packed=...)` takes them, optionally in
chunks of a fixed number of sequences (GradCache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mmssl.models.packing import mask_dtype_for, pack_rows, packing_error, position_offset
from mmssl.models.padding import pack_sequences

Layout = Literal["packed", "buckets", "padded"]
PACK_ROW_LENGTH_CPU = 64  # measured on 2 CPU cores: attention over longer rows costs more than it saves
PACK_ROW_LENGTH_CUDA = 256  # few large rows: one large kernel per layer
PACKING_TOLERANCE = 1e-4
PACKING_PROBE_TEXTS = ["a short one", "a somewhat longer sentence to check packing with", "x", "two words"]


@dataclass
class BatchLayout:
    """One run's layout (`kind`) and what it needs: the pad id, packed rows' length, first position id and
    mask type, and the bucket size."""

    kind: Layout
    pad_id: int
    row_length: int = PACK_ROW_LENGTH_CPU
    first_position: int = 0
    mask_dtype: torch.dtype | None = torch.bool
    bucket_size: int | None = None

    def group(self, seqs: list[list[int]], chunk: int | None = None) -> dict[str, Any]:
        """`seqs` as ``{"groups": [...], "restore": permutation | None}``, in chunks of `chunk` sequences."""
        if self.kind == "packed":
            step = chunk or len(seqs)
            groups = [pack_rows(seqs[s : s + step], self.pad_id, self.row_length, self.first_position, self.mask_dtype)
                      for s in range(0, len(seqs), step)]
            return {"groups": groups, "restore": None}
        size = chunk or (self.bucket_size if self.kind == "buckets" else None)
        return pack_sequences(seqs, self.pad_id, size or len(seqs), sort=size is not None)


def choose_layout(backbone: nn.Module, pad_id: int, probe: Sequence[Sequence[int]], *,
                  requested: Literal["auto", "packed", "buckets", "padded"] = "auto", pooling: str = "mean",
                  on_cuda: bool = False, row_length: int | None = None,
                  bucket_size: int | None = None) -> tuple[BatchLayout, str | None]:
    """The layout for `backbone`: `requested`, or with "auto" (and to check "packed") packed when the `probe`
    sequences embed the same packed as padded, else buckets on a CPU and padded on a GPU. Also returns why
    packing was refused (None when it was not refused); the caller decides whether a refused "packed" is an error."""
    layout = BatchLayout("padded", pad_id, row_length or (PACK_ROW_LENGTH_CUDA if on_cuda else PACK_ROW_LENGTH_CPU),
                         position_offset(backbone), mask_dtype_for(backbone), bucket_size)
    if requested in ("buckets", "padded"):
        layout.kind = requested
        return layout, None
    error = packing_error(backbone, pad_id, probe, pooling)
    if error is not None and error <= PACKING_TOLERANCE:
        layout.kind = "packed"
        return layout, None
    layout.kind = "padded" if on_cuda else "buckets"
    impl = getattr(getattr(backbone, "config", None), "_attn_implementation", None)
    return layout, (f"its attention ({impl}) does not take a block-diagonal mask" if error is None else
                    f"packed embeddings differ from padded ones by {error:.2g}")
