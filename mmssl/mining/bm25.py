"""BM25 candidates on `bm25s` (sparse, precomputed per-term scores; the index can be saved and memory-mapped).

The index is built from a stream of texts in chunks: bm25s' own `index` wants every document's token list
in memory at once (about 1.8 GB of Python lists for a million 50-word documents), so `build` tokenises one
chunk at a time with `bm25s.tokenize`, keeps only numpy (document, term, count) triples, and fills a
`bm25s.BM25` with the same score matrix its `index` would compute (the same float32 arithmetic, so search
results are identical); search, save and memory-mapped load are bm25s'.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable

import bm25s
import numpy as np
from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer

from mmssl.errors import MmsslError
from mmssl.mining.config import BM25Config


class BM25Index:
    """A bm25s retriever plus the tokenisation it was built with."""

    def __init__(self, cfg: BM25Config):
        self.cfg = cfg
        self.stemmer = None
        if cfg.stemmer:
            try:
                import Stemmer
            except ImportError:
                raise MmsslError("bm25.stemmer needs PyStemmer: pip install PyStemmer (or set bm25.stemmer=null)") from None
            self.stemmer = Stemmer.Stemmer(cfg.stemmer)
        self.retriever: bm25s.BM25 | None = None

    def tokenize(self, texts: list[str], ids: bool):
        return bm25s.tokenize(texts, lower=self.cfg.lowercase, stopwords=self.cfg.stopwords, stemmer=self.stemmer,
                              return_ids=ids, show_progress=False)

    def build(self, texts: Iterable[str], num_docs: int | None = None, chunk_size: int = 50_000) -> None:
        """Index `texts` (any iterable, read `chunk_size` at a time), or reload the index saved in
        `bm25.index_dir` when it exists (memory-mapped; `num_docs` checks it belongs to this corpus)."""
        index_dir = Path(self.cfg.index_dir).expanduser() if self.cfg.index_dir else None
        if index_dir is not None and (index_dir / "params.index.json").is_file():
            self.retriever = bm25s.BM25.load(str(index_dir), mmap=True)
            if num_docs is not None and self.retriever.scores["num_docs"] != num_docs:
                raise MmsslError(f"bm25.index_dir {str(index_dir)!r} holds an index of another corpus; "
                                 "delete it or point bm25.index_dir elsewhere")
            return
        self.retriever = _streamed_index(self, iter(texts), chunk_size)
        if index_dir is not None:
            self.retriever.save(str(index_dir))

    def search(self, queries: list[str], k: int, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k document indices and scores per query, best first."""
        k = min(k, self.retriever.scores["num_docs"])
        tokens = self.tokenize(queries, ids=False)
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=threads)
        return np.asarray(docs), np.asarray(scores)

    def score_pairs(self, queries: list[str], doc_ids: np.ndarray) -> np.ndarray:
        """BM25 score of document `doc_ids[i]` for query `i` (e.g. each query's positive)."""
        index = self.retriever.scores
        data, indices, indptr = index["data"], index["indices"], index["indptr"]
        vocab = self.retriever.vocab_dict
        out = np.zeros(len(queries), dtype=np.float32)
        for row, tokens in enumerate(self.tokenize(queries, ids=False)):
            doc = doc_ids[row]
            for token in tokens:
                term = vocab.get(token)
                if term is None:
                    continue
                start, end = indptr[term], indptr[term + 1]
                at = start + np.searchsorted(indices[start:end], doc)
                if at < end and indices[at] == doc:
                    out[row] += data[at]
        return out


def _streamed_index(index: BM25Index, texts, chunk_size: int) -> bm25s.BM25:
    """A bm25s.BM25 whose score matrix equals what `BM25.index` computes, built chunk by chunk."""
    cfg = index.cfg
    vocab: dict[str, int] = {}
    docs, terms, counts, lengths = [], [], [], []
    offset = 0
    while chunk := list(itertools.islice(texts, chunk_size)):
        tokenized = index.tokenize(chunk, ids=True)
        remap = np.empty(len(tokenized.vocab), dtype=np.int64)
        for token, local in tokenized.vocab.items():
            remap[local] = vocab.setdefault(token, len(vocab))
        sizes = np.fromiter((len(d) for d in tokenized.ids), dtype=np.int64, count=len(chunk))
        flat = remap[np.fromiter(itertools.chain.from_iterable(tokenized.ids), dtype=np.int64, count=int(sizes.sum()))]
        doc = np.repeat(np.arange(offset, offset + len(chunk), dtype=np.int64), sizes)
        keys, tf = np.unique(doc << 32 | flat, return_counts=True)  # sorted by document, then term
        docs.append((keys >> 32).astype(np.int32))
        terms.append((keys & 0xFFFFFFFF).astype(np.int32))
        counts.append(tf.astype(np.float32))
        lengths.append(sizes)
        offset += len(chunk)
    if offset == 0:
        raise MmsslError("BM25: the corpus is empty; give at least one document")
    doc = np.concatenate(docs)  # one array at a time: the chunks and one full copy, never two copies
    del docs
    term = np.concatenate(terms)
    del terms
    tf = np.concatenate(counts)
    del counts
    length = np.concatenate(lengths)
    retriever = bm25s.BM25(k1=cfg.k1, b=cfg.b, method=cfg.method)
    avg = np.array(length).mean()
    df = np.bincount(term, minlength=len(vocab))
    idf_of = _select_idf_scorer(retriever.idf_method)
    values, which = np.unique(df, return_inverse=True)  # idf per distinct document frequency, as bm25s: math.log
    idf64 = np.array([idf_of(int(v), N=offset) if v > 0 else 0.0 for v in values], dtype=np.float64)[which]
    idf = idf64.astype(np.float32)
    k1, b = cfg.k1, cfg.b
    # bm25s evaluates each document's term-frequency component in float64 (its average length is a numpy
    # float64) against float32 idf values, and stores float32; the same here, so the values are identical.
    # Done in slices, so that the float64 temporaries stay small.
    tfc_of = _select_tfc_scorer(cfg.method)
    retriever.nonoccurrence_array = None
    if cfg.method in ("bm25l", "bm25+"):
        base = tfc_of(tf_array=0, l_d=avg, l_avg=avg, k1=k1, b=b, delta=retriever.delta)
        retriever.nonoccurrence_array = (idf64 * base).astype(np.float32)
    scores = np.empty(len(tf), dtype=np.float32)
    for start in range(0, len(tf), 1 << 20):
        part = slice(start, start + (1 << 20))
        value = idf[term[part]] * tfc_of(tf_array=tf[part].astype(np.float64), l_d=length[doc[part]], l_avg=avg,
                                         k1=k1, b=b, delta=retriever.delta)
        if retriever.nonoccurrence_array is not None:
            value -= retriever.nonoccurrence_array[term[part]]
        scores[part] = value
    del tf
    order = np.argsort(term, kind="stable")  # term-major (CSC), documents ascending within each term
    del term
    indices = doc[order]
    del doc
    data = scores[order]
    del scores, order
    indptr = np.zeros(len(vocab) + 1, dtype=np.int64)  # as bm25s' own index
    np.cumsum(df, out=indptr[1:])
    retriever.scores = {"data": data, "indices": indices,
                        "indptr": indptr, "num_docs": offset}
    retriever.vocab_dict = {**vocab, **({"": len(vocab)} if "" not in vocab else {})}
    retriever.unique_token_ids_set = set(retriever.vocab_dict.values())
    return retriever
