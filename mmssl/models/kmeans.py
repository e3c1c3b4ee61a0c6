"""k-means for clustering methods (DeepCluster): faiss where it is installed, else a torch implementation on the
features' device (k-means++ seeding). Deterministic for a seed; an empty cluster takes half of a non-empty one (DeepCluster's rule:
copy a random non-empty centroid with a small symmetric perturbation), so every cluster ends non-empty unless
there are fewer distinct points than clusters."""

from __future__ import annotations

import torch
from torch import Tensor

PERTURBATION = 1e-4
KMEANS_PP_MAX = 1024


def kmeans(x: Tensor, k: int, iterations: int = 20, seed: int = 0, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(centroids ``[k, D]``, assignments ``[N]``) of the rows of `x` ``[N, D]`` (float32)."""
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= the number of points, got k={k} for {x.shape[0]} points")
    if backend == "faiss" or (backend == "auto" and _has_faiss()):
        return _faiss_kmeans(x, k, iterations, seed)
    return torch_kmeans(x, k, iterations, seed)


def _has_faiss() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def _faiss_kmeans(x: Tensor, k: int, iterations: int, seed: int) -> tuple[Tensor, Tensor]:
    import faiss

    data = x.detach().float().cpu().contiguous().numpy()
    km = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(data)
    _, assign = km.index.search(data, 1)
    return torch.from_numpy(km.centroids).to(x.device), torch.from_numpy(assign[:, 0]).long().to(x.device)


@torch.no_grad()
def assign_to(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (squared Euclidean) of every row, in blocks to bound memory."""
    c2 = centroids.pow(2).sum(dim=1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], 8192):
        block = x[start : start + 8192]
        out[start : start + 8192] = (c2[None, :] - 2 * block @ centroids.t()).argmin(dim=1)
    return out


@torch.no_grad()
def torch_kmeans(x: Tensor, k: int, iterations: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    x = x.detach().float()
    generator = torch.Generator().manual_seed(seed)
    centroids = _initial_centroids(x, k, generator)
    assign = assign_to(x, centroids)
    for _ in range(iterations):
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        for empty in (~filled).nonzero().flatten().tolist():  # DeepCluster: split a random non-empty cluster
            candidates = (counts > 1).nonzero().flatten()
            if len(candidates) == 0:
                break
            donor = int(candidates[torch.randint(len(candidates), (1,), generator=generator)])
            centroids[empty] = centroids[donor] * (1 + PERTURBATION)
            centroids[donor] = centroids[donor] * (1 - PERTURBATION)
            counts[donor] -= counts[donor] // 2  # bookkeeping for the next empty cluster only
            counts[empty] = 1
        assign = assign_to(x, centroids)
    return centroids, assign


def _initial_centroids(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (each next centre drawn with probability proportional to the squared distance to the
    nearest chosen one) up to `KMEANS_PP_MAX` clusters; beyond that (k sequential passes would cost more than
    the iterations), k distinct random points."""
    if k > KMEANS_PP_MAX:
        return x[torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)].clone()
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    chosen = [first]
    nearest = (x - x[first]).pow(2).sum(dim=1)
    for _ in range(k - 1):
        weights = nearest.cpu().double()
        if float(weights.sum()) <= 0:  # fewer distinct points than clusters: take any unused point
            nxt = next(i for i in range(x.shape[0]) if i not in set(chosen))
        else:
            nxt = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (x - x[nxt]).pow(2).sum(dim=1))
    return x[torch.tensor(chosen, device=x.device)].clone()
