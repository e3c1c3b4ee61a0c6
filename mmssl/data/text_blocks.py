"""Turn a text column into model inputs: packed fixed-length blocks (no padding) or truncated sequences."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from mmssl.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class TextBlocks:
    """Token id sequences ready for batching, plus what preprocessing did to the text."""

    dataset: datasets.Dataset  # column input_ids (fixed length when packed)
    num_texts: int
    num_tokens: int
    num_truncated: int = 0
    num_dropped_tokens: int = 0


def _tokenize(ds: datasets.Dataset, tokenizer, add_special_tokens: bool, append_eos: bool) -> datasets.Dataset:
    eos = tokenizer.eos_token_id

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"]
        if append_eos and eos is not None:
            ids = [seq + [eos] for seq in ids]
        return {"input_ids": ids}

    return ds.map(encode, batched=True, batch_size=2000, remove_columns=ds.column_names, desc="tokenize")


def pack(ds: datasets.Dataset, tokenizer, block_size: int, add_special_tokens: bool, append_eos: bool,
         what: str = "the corpus") -> TextBlocks:
    """Concatenate all tokenised texts and cut them into blocks of `block_size` (the tail is dropped)."""
    tokenized = _tokenize(ds, tokenizer, add_special_tokens, append_eos)
    flat = pc.list_flatten(tokenized.data.column("input_ids")).to_numpy().astype(np.int64)
    num_blocks = len(flat) // block_size
    if num_blocks == 0:
        raise DataError(
            f"{what} has {len(flat)} tokens, fewer than one block of objective.max_length={block_size}; "
            "add text, lower objective.max_length, or set objective.packing=false"
        )
    blocks = flat[: num_blocks * block_size].reshape(num_blocks, block_size)
    out = datasets.Dataset.from_dict({"input_ids": blocks})
    return TextBlocks(out, len(ds), int(len(flat)), num_dropped_tokens=int(len(flat) - blocks.size))


def truncate(ds: datasets.Dataset, tokenizer, max_length: int, add_special_tokens: bool, append_eos: bool) -> TextBlocks:
    """One sequence per text, cut to `max_length` tokens; the number of cut texts is reported."""
    tokenized = _tokenize(ds, tokenizer, add_special_tokens, append_eos)
    lengths = np.array([len(x) for x in tokenized["input_ids"]])
    over = int((lengths > max_length).sum())
    if over:
        log.warning("%d of %d texts are longer than objective.max_length=%d tokens and were truncated",
                    over, len(lengths), max_length)

    def cut(batch):
        return {"input_ids": [seq[:max_length] for seq in batch["input_ids"]]}

    tokenized = tokenized.map(cut, batched=True, desc="truncate") if over else tokenized
    tokenized = tokenized.filter(lambda b: [len(s) > 0 for s in b["input_ids"]], batched=True)
    return TextBlocks(tokenized, len(ds), int(np.minimum(lengths, max_length).sum()), num_truncated=over)


def collate_blocks(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack equal-length blocks, or pad ragged sequences to the batch's longest (with attention mask)."""
    seqs = [torch.as_tensor(np.asarray(r["input_ids"]), dtype=torch.long) for r in rows]
    longest = max(len(s) for s in seqs)
    if all(len(s) == longest for s in seqs):
        return {"input_ids": torch.stack(seqs), "attention_mask": None}
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}
