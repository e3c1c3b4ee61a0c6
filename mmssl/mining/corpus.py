"""The mining corpus as a stream: documents stay in their Arrow table (memory-mapped by `datasets`) and are
read in chunks; only 8-byte hashes per document are held in memory (for de-duplication and for finding
each positive's document id).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterator, Sequence

import datasets
import numpy as np

from mmssl.data.sources import load_splits
from mmssl.config import DataConfig

CHUNK = 50_000


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """Exact-text identity as int64 (blake2b, 8 bytes): a collision among a billion texts has odds ~3e-2."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little",
                                       signed=True) for t in texts), dtype=np.int64, count=len(texts))


class Corpus:
    """Distinct non-empty documents: the separate corpus (if any), then every positive not already in it.

    `iter_texts` streams them in order; `texts(ids)` fetches some by id; `ids_of(texts)` finds ids by text.
    """

    def __init__(self, table: datasets.Dataset | None, rows: np.ndarray, extra: list[str], hashes: np.ndarray):
        self.table, self.rows, self.extra = table, rows, extra
        order = np.argsort(hashes, kind="stable")
        self._sorted_hashes, self._order = hashes[order], order

    @classmethod
    def load(cls, corpus: DataConfig | None, positives: list[str], seed: int = 0) -> "Corpus":
        table, rows, hashes = None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if corpus is not None:
            corpus = dataclasses.replace(corpus, eval_fraction=0.0)
            table = load_splits(corpus, "text", ["text"], seed=seed, section="corpus").train
            table = table.select_columns(["text"])
            parts, keep = [], []
            for start in range(0, len(table), CHUNK):
                chunk = table[start:start + CHUNK]["text"]
                parts.append(text_hashes([t or "" for t in chunk]))
                keep.append(np.fromiter((bool(t and t.strip()) for t in chunk), dtype=bool, count=len(chunk)))
            all_hashes, non_empty = np.concatenate(parts), np.concatenate(keep)
            candidates = np.flatnonzero(non_empty)
            _, first = np.unique(all_hashes[candidates], return_index=True)  # first occurrence of each text
            rows = candidates[np.sort(first)]
            hashes = all_hashes[rows]
        positive_hashes = text_hashes(positives)
        new = ~np.isin(positive_hashes, hashes)
        _, first = np.unique(positive_hashes, return_index=True)
        keep = np.zeros(len(positives), dtype=bool)
        keep[first] = True
        extra = [positives[i] for i in np.flatnonzero(new & keep)]
        return cls(table, rows, extra, np.concatenate([hashes, text_hashes(extra)]))

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def iter_texts(self, chunk: int = CHUNK) -> Iterator[str]:
        for start in range(0, len(self.rows), chunk):
            yield from self.table[self.rows[start:start + chunk]]["text"]
        yield from self.extra

    def texts(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Documents by id (any order, repeats allowed), one Arrow read for the table's part."""
        ids = np.asarray(ids, dtype=np.int64)
        out: list[str] = [""] * len(ids)
        in_table = np.flatnonzero(ids < len(self.rows))
        if len(in_table):
            fetched = self.table[self.rows[ids[in_table]]]["text"]
            for position, text in zip(in_table.tolist(), fetched):
                out[position] = text
        for position in np.flatnonzero(ids >= len(self.rows)).tolist():
            out[position] = self.extra[int(ids[position]) - len(self.rows)]
        return out

    def ids_of(self, texts: Sequence[str]) -> np.ndarray:
        """Document id of each text (-1 where it is not in the corpus)."""
        wanted = text_hashes(texts)
        at = np.searchsorted(self._sorted_hashes, wanted).clip(0, max(len(self) - 1, 0))
        found = self._sorted_hashes[at] == wanted if len(self) else np.zeros(len(texts), dtype=bool)
        return np.where(found, self._order[at], -1)
