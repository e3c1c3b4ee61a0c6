"""SemDeDup (Abbas et al., 2023): cluster the embeddings with k-means (faiss where installed), then inside each
cluster drop a sample whose cosine similarity to an earlier kept sample of the same cluster reaches a
threshold. Clusters make the pairwise comparison affordable (about ``cluster_size`` x N instead of N x N); a
pair split across two clusters is missed, which is rare for near-duplicates (they sit next to each other)."""

from __future__ import annotations

import math

import numpy as np

BLOCK = 1024  # rows of a cluster compared at once
TRAIN_POINTS_PER_CLUSTER = 256  # faiss's own subsampling: k-means trains on at most this many points per centroid


def cluster(embeddings: np.ndarray, rows: np.ndarray, cluster_size: int, seed: int,
            backend: str = "auto") -> np.ndarray:
    """The k-means cluster of each of `rows` of `embeddings` (``[N, D]``, normalised; a memmap is read in
    chunks), about `cluster_size` rows per cluster, trained on a sample (`mmssl.models.kmeans`: faiss where
    it is installed, else torch)."""
    import torch

    from mmssl.models.kmeans import assign_to, kmeans

    k = max(1, math.ceil(len(rows) / cluster_size))
    if k == 1:
        return np.zeros(len(rows), dtype=np.int64)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(rows, size=min(len(rows), k * TRAIN_POINTS_PER_CLUSTER), replace=False))
    centroids, _ = kmeans(torch.from_numpy(np.asarray(embeddings[sample], dtype=np.float32)), k, seed=seed,
                          backend=backend)
    assign = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), 65536):
        chunk = torch.from_numpy(np.asarray(embeddings[rows[start : start + 65536]], dtype=np.float32))
        assign[start : start + 65536] = assign_to(chunk, centroids).numpy()
    return assign


def duplicates(embeddings: np.ndarray, rows: np.ndarray, threshold: float, cluster_size: int = 1000,
               seed: int = 0, backend: str = "auto",
               nearest: np.ndarray | None = None) -> dict[int, tuple[int, float]]:
    """``{row: (the earlier kept row it duplicates, cosine similarity)}`` among `rows` (ascending: read order).
    `nearest`, if given (one value per row), receives each row's highest cosine similarity to an earlier kept row
    of its cluster (-1 for the first of a cluster): the report's histogram."""
    rows = np.asarray(rows, dtype=np.int64)
    if nearest is not None:
        nearest[:] = -1.0
    if len(rows) < 2:
        return {}
    assign = cluster(embeddings, rows, cluster_size, seed, backend)
    order = np.lexsort((rows, assign))  # cluster by cluster, read order inside each
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    found: dict[int, tuple[int, float]] = {}
    for members in np.split(rows[order], bounds):
        found.update(_within(embeddings, members, threshold, rows, nearest))
    return found


def _unit(rows: np.ndarray) -> np.ndarray:
    """float32 rows of norm 1 (stored float16 embeddings are renormalised: identical rows then score 1.0)."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _within(embeddings: np.ndarray, members: np.ndarray, threshold: float, rows: np.ndarray,
            nearest: np.ndarray | None) -> dict[int, tuple[int, float]]:
    """Greedy in read order inside one cluster: a row is kept unless a kept earlier row is similar enough."""
    found: dict[int, tuple[int, float]] = {}
    kept_rows: list[int] = []
    kept = np.empty((0, embeddings.shape[1]), dtype=np.float32)
    for start in range(0, len(members), BLOCK):
        block_rows = members[start : start + BLOCK]
        block = _unit(embeddings[block_rows])
        to_kept = block @ kept.T  # [b, kept so far]
        inside = block @ block.T  # [b, b]
        kept_here: list[int] = []
        for i, row in enumerate(block_rows.tolist()):
            best, best_row = -1.0, -1
            if to_kept.shape[1]:
                j = int(to_kept[i].argmax())
                best, best_row = float(to_kept[i, j]), kept_rows[j]
            if kept_here:
                sims = inside[i, kept_here]
                j = int(sims.argmax())
                if sims[j] > best:
                    best, best_row = float(sims[j]), int(block_rows[kept_here[j]])
            if nearest is not None:
                nearest[np.searchsorted(rows, row)] = best
            if best >= threshold:
                found[row] = (best_row, best)
            else:
                kept_here.append(i)
        kept_rows += [int(block_rows[i]) for i in kept_here]
        kept = np.concatenate([kept, block[kept_here]])
    return found
