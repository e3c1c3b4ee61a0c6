"""Dense candidates: any sentence encoder, an on-disk embedding cache, exact top-k in memory-bounded chunks."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from mmssl.errors import MmsslError
from mmssl.mining.config import DenseConfig


def _key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).hexdigest().encode()  # hex: numpy "S" arrays drop trailing NULs


class EmbeddingCache:
    """Embeddings of one model, keyed by the text's SHA-1; written atomically."""

    def __init__(self, directory: Path, fingerprint: str):
        self.dir = directory / hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
        self.keys: dict[bytes, int] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        if (self.dir / "keys.npy").is_file():
            keys = np.load(self.dir / "keys.npy")
            self.vectors = np.load(self.dir / "vectors.npy", mmap_mode="r")
            self.keys = {bytes(k): i for i, k in enumerate(keys)}

    def lookup(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Row index per text (-1 when missing) and the positions of the missing texts."""
        rows = np.array([self.keys.get(_key(t), -1) for t in texts], dtype=np.int64)
        return rows, [i for i, r in enumerate(rows) if r < 0]

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        fresh = [(t, v) for t, v in zip(texts, vectors) if _key(t) not in self.keys]
        if not fresh:
            return
        old = np.asarray(self.vectors) if len(self.keys) else np.zeros((0, vectors.shape[1]), np.float32)
        new = np.concatenate([old, np.stack([v for _, v in fresh])]).astype(np.float32)
        for t, _ in fresh:
            self.keys[_key(t)] = len(self.keys)
        keys = np.array(list(self.keys), dtype="S40")
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, array in (("vectors", new), ("keys", keys)):
            tmp = self.dir / f".{name}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, self.dir / f"{name}.npy")
        self.vectors = new


class DenseEncoder:
    def __init__(self, cfg: DenseConfig):
        import torch
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg
        from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

        refuse_prompts()
        try:
            self.model = SentenceTransformer(cfg.model, device="cuda" if torch.cuda.is_available() else "cpu",
                                             trust_remote_code=cfg.trust_remote_code)
        except Exception as exc:
            if is_custom_code_error(exc):
                raise custom_code_error("dense.model", cfg.model, "dense.trust_remote_code") from None
            raise MmsslError(f"dense.model {cfg.model!r} could not be loaded as a SentenceTransformer ({exc}); "
                             "give a sentence-transformers folder (e.g. an mmssl SimCSE output) or a Hub id") from None
        if cfg.max_seq_length:
            self.model.max_seq_length = cfg.max_seq_length
        fingerprint = f"{Path(cfg.model).resolve() if Path(cfg.model).exists() else cfg.model}|{self.model.max_seq_length}"
        self.cache = EmbeddingCache(Path(cfg.cache_dir).expanduser(), fingerprint) if cfg.cache_dir else None
        self.encoded = 0  # texts actually run through the model (cache misses)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Normalised embeddings; each distinct text is encoded once, cached texts not at all."""
        unique = list(dict.fromkeys(texts))
        table = self.encode_stream(unique, len(unique))
        where = {t: i for i, t in enumerate(unique)}
        return table[[where[t] for t in texts]]

    def encode_stream(self, texts: Iterable[str], count: int, chunk: int = 50_000) -> np.ndarray:
        """Normalised embeddings of `count` distinct texts read from a stream, `chunk` at a time, into one
        preallocated matrix; new embeddings go to the cache in one write at the end."""
        out: np.ndarray | None = None
        fresh_texts: list[str] = []
        fresh_vectors: list[np.ndarray] = []
        stream = iter(texts)
        start = 0
        while block := list(itertools.islice(stream, chunk)):
            if self.cache is not None:
                rows, missing = self.cache.lookup(block)
                vectors = np.empty((len(block), self.dim), dtype=np.float32)
                if len(missing) < len(block):
                    hit = rows >= 0
                    vectors[hit] = np.asarray(self.cache.vectors)[rows[hit]]
                if missing:
                    todo = [block[i] for i in missing]
                    vectors[missing] = encoded = self._run(todo)
                    fresh_texts += todo
                    fresh_vectors.append(encoded)
            else:
                vectors = self._run(block)
            if out is None:
                out = np.empty((count, vectors.shape[1]), dtype=np.float32)
            out[start:start + len(block)] = vectors
            start += len(block)
        if start != count:
            raise MmsslError(f"dense: the corpus stream gave {start} texts, {count} expected")
        if self.cache is not None and fresh_texts:
            self.cache.add(fresh_texts, np.concatenate(fresh_vectors))
        return out if out is not None else np.zeros((0, self.dim), dtype=np.float32)

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def _run(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        return self.model.encode(texts, batch_size=self.cfg.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False).astype(np.float32)


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, budget: int = 1 << 26, use_faiss: bool = False):
    """Exact inner-product top-k, in query x corpus chunks whose score block holds at most `budget` floats."""
    k = min(k, len(corpus))
    if use_faiss:
        try:
            import faiss
        except ImportError:
            raise MmsslError("dense.use_faiss needs faiss: pip install faiss-cpu (or set dense.use_faiss=false)") from None
        index = faiss.IndexFlatIP(corpus.shape[1])
        index.add(np.ascontiguousarray(corpus, dtype=np.float32))
        scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return ids, scores
    import torch  # here, not at the top: BM25-only mining never loads torch (about 300 MB)

    corpus_t = torch.from_numpy(np.ascontiguousarray(corpus))
    doc_chunk = max(k, min(len(corpus), budget // 256))
    query_chunk = max(1, budget // doc_chunk)
    all_ids, all_scores = [], []
    for qs in range(0, len(queries), query_chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[qs : qs + query_chunk]))
        best_s = torch.full((len(q), 0), float("-inf"))
        best_i = torch.zeros((len(q), 0), dtype=torch.long)
        for ds in range(0, len(corpus_t), doc_chunk):
            s = q @ corpus_t[ds : ds + doc_chunk].T
            s_top, i_top = s.topk(min(k, s.shape[1]), dim=1)
            merged_s = torch.cat([best_s, s_top], 1)
            merged_i = torch.cat([best_i, i_top + ds], 1)
            best_s, order = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, order)
        all_ids.append(best_i.numpy())
        all_scores.append(best_s.numpy())
    return np.concatenate(all_ids), np.concatenate(all_scores)
