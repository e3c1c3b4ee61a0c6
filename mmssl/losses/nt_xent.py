"""Contrastive losses of two-view image SSL, all built on :func:`mmssl.losses.info_nce`.

* :func:`nt_xent` - SimCLR's NT-Xent (Chen et al. 2020): each of the ``2N`` views is a query, its pair is the
  positive, the other ``2N - 2`` views of the (gathered, with gradient) batch are negatives.
* :func:`moco_v2_loss` - MoCo v1/v2 (He et al. 2020; Chen et al. 2020): queries against their momentum key
  and a queue of past keys.
* :func:`moco_v3_loss` - MoCo v3 (Chen, Xie & He 2021): symmetric, no queue, the momentum keys of all
  processes as negatives, scaled by ``2 * temperature`` as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.losses.contrastive import Reduction, _check_2d, _reduce, info_nce
from mmssl.losses.hard_negatives import NegativeShaping
from mmssl.distributed import gather_no_grad, gather_with_grad, local_slice_offset

__all__ = ["nt_xent", "moco_v2_loss", "moco_v3_loss"]


def _check_pair(a: str, x: Tensor, b: str, y: Tensor) -> None:
    _check_2d(a, x)
    _check_2d(b, y)
    if x.shape != y.shape:
        raise ValueError(f"{a} and {b} must have equal shapes (row i of each is one pair), got "
                         f"{list(x.shape)} and {list(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{a} is empty: need at least one pair")


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float | Tensor = 0.5,
    gather: bool = True,
    *,
    extra_negatives: Tensor | None = None,
    group=None,
    reduction: Reduction = "mean",
    shaping: NegativeShaping | None = None,
) -> Tensor:
    r"""NT-Xent, the normalised temperature-scaled cross entropy of SimCLR (Chen et al. 2020).

    The ``2N`` embeddings ``z1``, ``z2`` [N, D] (two views of ``N`` images on this process) are scored against
    the ``2N'`` embeddings of the global batch (``N' = world * N`` with ``gather``, gathered *with* gradient):

    .. math:: \ell_i = -\log \frac{\exp(\cos(z_i, z_{p(i)}) / T)}{\sum_{j \ne i} \exp(\cos(z_i, z_j) / T)}

    where ``p(i)`` is the other view of the same image. Implemented as two :func:`info_nce` calls: ``z1``
    against columns ``[all z2, all z1]`` and ``z2`` against ``[all z1, all z2]``, positive at
    ``rank * N + i``, the query itself removed by the false-negative mask.

    With a per-process mean and DDP-averaged gradients this equals the loss and gradients of one process
    holding the whole ``2N'`` batch (``tests/losses/test_nt_xent.py`` runs 2 real processes).

    Args:
        z1, z2: [N, D] projections of the two views; row ``i`` of each comes from the same image.
        temperature: softmax temperature ``T > 0`` (SimCLR: 0.5 for small batches, 0.1 for 4096).
        gather: take negatives from every process (every process must pass the same ``N``); ignored when
            torch.distributed is not initialised.
        extra_negatives: [K, D] more negatives for every row (e.g. entries of a memory bank), no gradient.
        shaping: MoCHi / debiased / hardness-weighted negatives (`mmssl.losses.hard_negatives`).
        group: process group for the gather.
        reduction: ``'mean'`` over the ``2N`` local rows (default), ``'sum'`` or ``'none'`` ([2N]: the
            ``z1`` rows then the ``z2`` rows).
    """
    _check_pair("z1", z1, "z2", z2)
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    all1, all2 = (gather_with_grad(z1, group), gather_with_grad(z2, group)) if gather else (z1, z2)
    n, total = z1.shape[0], all1.shape[0]
    if total < 2:
        raise ValueError("NT-Xent with a single pair has no negatives: use a (global) batch of at least 2 images")
    offset = local_slice_offset(n, group) if gather else 0
    rows = torch.arange(n, device=z1.device)
    bank = None
    if extra_negatives is not None:
        _check_2d("extra_negatives", extra_negatives, z1.shape[1])
        bank = F.normalize(extra_negatives.detach().to(z1.dtype), dim=-1)
    self_mask = torch.zeros(n, 2 * total + (0 if bank is None else bank.shape[0]), dtype=torch.bool,
                            device=z1.device)
    self_mask[rows, total + offset + rows] = True  # the query itself, among the extra negatives

    def half(q: Tensor, positives: Tensor, same_view: Tensor) -> Tensor:
        negatives = same_view if bank is None else torch.cat([same_view, bank])
        return info_nce(q, positives, extra_negatives=negatives, temperature=temperature, normalize=False,
                        label_offset=offset, false_negative_mask=self_mask, reduction="none", shaping=shaping)

    return _reduce(torch.cat([half(z1, all2, all1), half(z2, all1, all2)]), reduction)


def moco_v2_loss(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    temperature: float | Tensor = 0.2,
    *,
    in_batch_negatives: bool = False,
    reduction: Reduction = "mean",
    shaping: NegativeShaping | None = None,
) -> Tensor:
    r"""MoCo v1/v2 InfoNCE (He et al. 2020; Chen, Fan, Girshick & He 2020).

    .. math:: \ell_i = -\log \frac{\exp(q_i \cdot k_i / T)}{\exp(q_i \cdot k_i / T) + \sum_{n} \exp(q_i \cdot u_n / T)}

    on L2-normalised vectors, with ``u`` the queue. As in MoCo, the other keys of the batch are *not*
    negatives (they join the queue after the step) unless ``in_batch_negatives``.

    Args:
        q: [N, D] queries from the online encoder.
        k: [N, D] keys from the momentum encoder, ``k[i]`` the positive of ``q[i]``; detached here.
        queue: [K, D] past keys (:attr:`mmssl.models.momentum.EmbeddingQueue.negatives`); detached here.
            Enqueue this step's (gathered) keys *after* ``backward()``.
        temperature: ``T`` (MoCo v2: 0.2).
        in_batch_negatives: also use the other keys of the batch as negatives.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` ([N]).
        shaping: MoCHi / debiased / hardness-weighted negatives (`mmssl.losses.hard_negatives`).
    """
    _check_pair("q", q, "k", k)
    _check_2d("queue", queue, q.shape[1])
    n, size = q.shape[0], queue.shape[0]
    if size == 0 and not (in_batch_negatives and n > 1):
        raise ValueError("the MoCo queue is empty, so there are no negatives: enqueue keys before the first "
                         "loss (e.g. the first batch's keys) or use in_batch_negatives=True")
    mask = None
    if not in_batch_negatives:
        mask = torch.zeros(n, n + size, dtype=torch.bool, device=q.device)
        mask[:, :n] = ~torch.eye(n, dtype=torch.bool, device=q.device)
    return info_nce(q, k.detach(), extra_negatives=queue.detach(), temperature=temperature,
                    false_negative_mask=mask, reduction=reduction, shaping=shaping)


def moco_v3_loss(
    q1: Tensor,
    q2: Tensor,
    k1: Tensor,
    k2: Tensor,
    temperature: float | Tensor = 0.2,
    gather: bool = True,
    *,
    scale_by_temperature: bool = True,
    group=None,
    shaping: NegativeShaping | None = None,
) -> Tensor:
    r"""MoCo v3 (Chen, Xie & He 2021): ``ctr(q1, k2) + ctr(q2, k1)``, no queue.

    ``ctr(q, k)`` is InfoNCE of the local queries against the momentum keys of *all* processes (gathered
    without gradient, positive at ``rank * N + i``), mean over the local queries. Convention: the official
    code's ``CrossEntropyLoss(logits / T, labels) * 2T`` for each term, summed over the two terms; so the loss
    is ``2T * (ctr(q1, k2) + ctr(q2, k1))`` and the gradient scale on the logits does not depend on ``T``.
    ``scale_by_temperature=False`` drops the ``2T`` factor (plain sum of two InfoNCE terms).

    Args:
        q1, q2: [N, D] predictor outputs of the online encoder for views 1 and 2.
        k1, k2: [N, D] momentum-encoder outputs for views 1 and 2; detached here.
        temperature: ``T`` (MoCo v3: 0.2 for ViT, 1.0 for ResNet-50).
        gather: negatives from the keys of every process (ignored when not distributed).
        group: process group for the gather.
        shaping: MoCHi / debiased / hardness-weighted negatives (`mmssl.losses.hard_negatives`).
    """
    _check_pair("q1", q1, "k2", k2)
    _check_pair("q2", q2, "k1", k1)
    _check_pair("q1", q1, "q2", q2)

    def ctr(q: Tensor, k: Tensor) -> Tensor:
        keys = gather_no_grad(k.detach(), group) if gather else k.detach()
        offset = local_slice_offset(q, group) if gather else 0
        return info_nce(q, keys, temperature=temperature, label_offset=offset, shaping=shaping)

    loss = ctr(q1, k2) + ctr(q2, k1)
    return loss * (2 * temperature) if scale_by_temperature else loss
