"""Negative cosine similarity: the loss of BYOL (Grill et al. 2020) and SimSiam (Chen & He 2021).

Both predict one view's target projection ``z`` from the other view's prediction ``p``; the target
branch gets no gradient (stop-gradient). BYOL writes the loss as the normalised MSE
``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``, SimSiam as ``-cos(p, z)``: the same gradient up to a factor 2.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.losses.contrastive import Reduction, _reduce

__all__ = ["negative_cosine", "symmetric_negative_cosine"]

Form = Literal["simsiam", "byol"]


def negative_cosine(p: Tensor, z: Tensor, *, form: Form = "simsiam", reduction: Reduction = "mean") -> Tensor:
    """Per pair ``-cos(p, z)`` (``form='simsiam'``) or ``2 - 2 cos(p, z)`` (``form='byol'``), then reduced.

    ``p``, ``z``: [N, D]. ``z`` is *not* detached here: pass ``z.detach()`` (or the output of a momentum
    encoder) or use :func:`symmetric_negative_cosine`. Half-precision inputs are computed in float32.
    """
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(f"p and z must be 2-D with equal shapes [N, D], got {list(p.shape)} and {list(z.shape)}")
    if form not in ("simsiam", "byol"):
        raise ValueError(f"form must be 'simsiam' or 'byol', got {form!r}")
    if p.dtype in (torch.float16, torch.bfloat16):
        p, z = p.float(), z.float()
    cos = (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=-1)
    return _reduce(-cos if form == "simsiam" else 2 - 2 * cos, reduction)


def symmetric_negative_cosine(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, *, form: Form = "simsiam") -> Tensor:
    r"""The symmetrised loss of SimSiam / BYOL with the stop-gradient applied here to ``z1`` and ``z2``.

    * ``form='simsiam'``: :math:`\tfrac12 D(p_1, sg(z_2)) + \tfrac12 D(p_2, sg(z_1))` with :math:`D = -\cos`
      (SimSiam eq. 2; in ``[-1, 1]``).
    * ``form='byol'``: :math:`\mathcal{L} + \tilde{\mathcal{L}} = \ell(p_1, sg(z_2)) + \ell(p_2, sg(z_1))` with
      :math:`\ell = 2 - 2\cos` (BYOL eq. 2 and the symmetrised sum; in ``[0, 8]``).

    Each term is the mean over the ``N`` pairs. ``p1``, ``p2``: [N, D] predictions of views 1 and 2; ``z1``,
    ``z2``: [N, D] target projections (online projector for SimSiam, momentum encoder for BYOL).
    """
    d12 = negative_cosine(p1, z2.detach(), form=form)
    d21 = negative_cosine(p2, z1.detach(), form=form)
    return (d12 + d21) / 2 if form == "simsiam" else d12 + d21
