"""VICReg (Bardes, Ponce & LeCun 2022, "Variance-Invariance-Covariance Regularization"): two views' embeddings
are pulled together (invariance), while each dimension keeps a standard deviation of at least ``gamma`` over the
batch (variance) and different dimensions are decorrelated (covariance). No negatives, no momentum encoder, no
predictor: the variance term alone prevents collapse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import gather_with_grad

__all__ = ["vicreg_loss"]


def vicreg_loss(z1: Tensor, z2: Tensor, *, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                gather: bool = True) -> dict[str, Tensor]:
    """The weighted sum (``loss``) and its three terms for embeddings ``z1``, ``z2`` [N, D] of two views.

    * invariance: mean squared error between ``z1`` and ``z2`` (over this process's rows);
    * variance: ``mean_d relu(gamma - sqrt(var_d + eps))`` per view, averaged over the two views;
    * covariance: the squared off-diagonal entries of each view's covariance matrix, summed and divided by
      ``D``, summed over the two views.

    With ``gather`` the variance and covariance use the rows of every process (the batch statistics of the
    global batch, as the paper's code), with gradient. Computed in float32.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must be [N, D] with equal shapes, got {list(z1.shape)}, {list(z2.shape)}")
    z1, z2 = z1.float(), z2.float()
    invariance = F.mse_loss(z1, z2)
    if gather:
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    if z1.shape[0] < 2:
        raise ValueError("the variance and covariance are batch statistics: they need at least 2 rows (over every "
                         f"process with gather), got {z1.shape[0]}")
    variance = (_variance(z1, gamma, eps) + _variance(z2, gamma, eps)) / 2
    covariance = _covariance(z1) + _covariance(z2)
    loss = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    return {"loss": loss, "invariance": invariance.detach(), "variance": variance.detach(),
            "covariance": covariance.detach()}


def _variance(z: Tensor, gamma: float, eps: float) -> Tensor:
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance(z: Tensor) -> Tensor:
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / (n - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d
