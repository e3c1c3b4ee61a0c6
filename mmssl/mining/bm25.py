"""BM25 candidates on `bm25s` (sparse, precomputed per-term scores; the index can be saved and memory-mapped)."""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np

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

    def build(self, corpus: list[str]) -> None:
        index_dir = Path(self.cfg.index_dir) if self.cfg.index_dir else None
        if index_dir is not None and (index_dir / "params.index.json").is_file():
            self.retriever = bm25s.BM25.load(str(index_dir), mmap=True)
            if self.retriever.scores["num_docs"] != len(corpus):
                raise MmsslError(f"bm25.index_dir {str(index_dir)!r} holds an index of another corpus; "
                                 "delete it or point bm25.index_dir elsewhere")
            return
        self.retriever = bm25s.BM25(k1=self.cfg.k1, b=self.cfg.b, method=self.cfg.method)
        self.retriever.index(self.tokenize(corpus, ids=True), show_progress=False)
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
