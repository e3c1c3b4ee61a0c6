"""Padding-free batches for encoders: sequences packed end to end into a few rows, one forward pass.

A batch of variable-length sequences becomes ``[rows, row_length]`` token ids where every row holds several
whole sequences back to back (first-fit decreasing, so almost no padding), their position ids restart at each
sequence, and a block-diagonal attention mask keeps every sequence attending to itself only. The encoder then
runs once per batch (one large kernel per layer on a GPU) and does no work on padding (the saving on a CPU).
The pooled embedding of a sequence is the same as when it is encoded alone, to float rounding: `packing_error`
checks that for a given model before a run relies on it.

Models take the packed layout through two standard inputs of transformers' encoders: ``position_ids`` and a
4-D attention mask (which the mask utilities pass through as is). ``row_length`` bounds the attention work:
each token attends over its row, so rows of a few hundred tokens keep that cost small beside the linear layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmssl.models.padding import pad_sequences, pool

DEFAULT_ROW_LENGTH = 256


def position_offset(model: nn.Module) -> int:
    """The first position id of a sequence: 0, or ``padding_idx + 1`` for RoBERTa-style embeddings."""
    embeddings = getattr(model, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    if padding_idx is None:
        return 0
    return int(padding_idx) + 1


def pack_rows(seqs: Sequence[Sequence[int]], pad_id: int, row_length: int = DEFAULT_ROW_LENGTH,
              first_position: int = 0, mask_dtype: torch.dtype = torch.bool) -> dict[str, Any]:
    """Pack `seqs` into rows of at most ``max(row_length, longest)`` tokens (first-fit decreasing).

    Returns ``input_ids``/``position_ids`` [R, T] and ``attention_mask`` [R, 1, T, T] (True, or 0.0 for a float
    `mask_dtype`, where a token may attend), plus where each sequence lies: ``row``, ``start``, ``length`` [N]
    in the input order, and ``segment`` [R, T], the sequence each token belongs to (-1 for padding). Padding
    attends to its row's padding only, so no softmax row is empty.
    """
    n = len(seqs)
    if n == 0:
        raise ValueError("cannot pack an empty list of sequences")
    lengths = [len(s) for s in seqs]
    if min(lengths) == 0:
        raise ValueError("cannot pack an empty sequence")
    width = max(row_length, max(lengths))
    free: list[int] = []  # tokens left in each row
    row_of, start_of = [0] * n, [0] * n
    for i in sorted(range(n), key=lambda i: -lengths[i]):
        row = next((r for r, left in enumerate(free) if left >= lengths[i]), None)
        if row is None:
            free.append(width)
            row = len(free) - 1
        row_of[i], start_of[i] = row, width - free[row]
        free[row] -= lengths[i]
    used = max(width - left for left in free)  # trim the common padding tail
    rows = len(free)
    input_ids = torch.full((rows, used), pad_id, dtype=torch.long)
    position_ids = torch.full((rows, used), first_position, dtype=torch.long)
    segment = torch.full((rows, used), -1, dtype=torch.long)
    for i, seq in enumerate(seqs):
        r, s, length = row_of[i], start_of[i], lengths[i]
        input_ids[r, s : s + length] = torch.as_tensor(seq, dtype=torch.long)
        position_ids[r, s : s + length] = torch.arange(first_position, first_position + length)
        segment[r, s : s + length] = i
    same = segment.unsqueeze(2) == segment.unsqueeze(1)  # padding (-1) attends to padding: no empty softmax row
    if mask_dtype == torch.bool:
        mask = same.unsqueeze(1)
    else:
        mask = torch.zeros(same.shape, dtype=mask_dtype).masked_fill_(~same, torch.finfo(mask_dtype).min).unsqueeze(1)
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask, "segment": segment,
            "row": torch.tensor(row_of), "start": torch.tensor(start_of), "length": torch.tensor(lengths)}


def pool_packed(hidden: Tensor, packed: dict[str, Any], mode: str) -> Tensor:
    """Sentence embeddings [N, H] (input order) from packed token states [R, T, H]: ``cls`` (first token),
    ``mean`` (over the sequence's tokens, accumulated in float32 for half precision), ``last_token``."""
    rows, width, size = hidden.shape
    flat = hidden.reshape(rows * width, size)
    first = packed["row"].to(hidden.device) * width + packed["start"].to(hidden.device)
    length = packed["length"].to(hidden.device)
    if mode == "cls":
        return flat[first]
    if mode == "last_token":
        return flat[first + length - 1]
    if mode == "mean":
        acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
        owner = packed["segment"].to(hidden.device).reshape(-1)
        real = owner >= 0
        summed = torch.zeros(first.shape[0], size, dtype=acc, device=hidden.device)
        summed.index_add_(0, owner[real], flat[real].to(acc))
        return (summed / length.unsqueeze(1).to(acc)).to(hidden.dtype)
    raise ValueError(f"pooling must be cls, mean or last_token, got {mode!r}")


def mask_dtype_for(model: nn.Module) -> torch.dtype | None:
    """The 4-D mask type the model's attention takes (bool for SDPA, additive float for eager); None when
    its attention implementation cannot take a block-diagonal mask (flash attention ignores masks)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return torch.bool
    if impl == "eager":
        return next(model.parameters()).dtype
    return None


@torch.no_grad()
def packing_error(model: nn.Module, pad_id: int, sample: Sequence[Sequence[int]], pooling: str = "mean") -> float | None:
    """Largest difference between the pooled embeddings of `sample` encoded packed and encoded padded (eval mode,
    wherever the model is); None when the model cannot take a packed batch
    (its attention implementation ignores masks, or its forward refuses ``position_ids`` or a 4-D mask)."""
    dtype = mask_dtype_for(model)
    if dtype is None:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        padded = {k: v.to(device) for k, v in pad_sequences(sample, pad_id).items()}
        reference = pool(model(**padded).last_hidden_state, padded["attention_mask"], pooling)
        packed = pack_rows(sample, pad_id, row_length=sum(len(s) for s in sample),
                           first_position=position_offset(model), mask_dtype=dtype)
        hidden = model(**{k: packed[k].to(device) for k in ("input_ids", "position_ids", "attention_mask")}).last_hidden_state
        got = pool_packed(hidden, packed, pooling)
    except (TypeError, ValueError, RuntimeError, IndexError):
        return None
    finally:
        model.train(was_training)
    return float((got.float() - reference.float()).abs().max())
