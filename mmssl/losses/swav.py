"""SwAV's losses (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"): Sinkhorn-Knopp codes that split the (global) batch equally among the prototypes, and the swapped
prediction of one crop's code from another crop's scores."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import is_distributed


def _all_reduce(x: Tensor, op=None) -> Tensor:
    if is_distributed():
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Codes ``[B, K]`` for prototype scores ``[B, K]``: each row sums to 1, and each prototype gets about
    B_total / K of the mass of the batch of every process together (the sums are all-reduced, so 2 processes
    with B rows each give the codes 1 process gives the 2B rows). `epsilon` is the entropy weight."""
    logits = scores.float() / epsilon
    top = _all_reduce(logits.max().clone(), dist.ReduceOp.MAX if is_distributed() else None)
    q = torch.exp(logits - top).t()  # [K, B]; one shift for every process keeps the sums consistent
    k = q.shape[0]
    b = torch.tensor(float(q.shape[1]), device=q.device)
    b = _all_reduce(b)
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # each prototype: 1/K of the mass
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample: 1/B of the mass
        q /= b
    q *= b
    return q.t()


def swapped_prediction(codes: Tensor, scores: Tensor, temperature: float) -> Tensor:
    """Cross-entropy between a crop's codes ``[B, K]`` and the softmax of another crop's scores ``[B, K]`` / T."""
    return -(codes * F.log_softmax(scores.float() / temperature, dim=1)).sum(dim=1).mean()
