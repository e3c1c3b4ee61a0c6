"""Supervised contrastive learning (SupCon, Khosla et al. 2020), built on :func:`mmssl.losses.info_nce`.

* :func:`same_label_mask` - the ``positive_mask`` of an anchor: every column with its label, plus its own pair
  column; an unlabelled anchor (label ``-1``) has its pair as its only positive.
* :func:`supcon` - the two-view image loss: NT-Xent (:func:`mmssl.losses.nt_xent`) with every view of every
  same-labelled image of the (gathered) batch as a further positive. Without labels it *is* NT-Xent.

Text pairs (SimCSE's ``supcon`` mode) build their mask with :func:`same_label_mask` and call
:func:`info_nce` with their own negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.distributed import gather_no_grad, gather_with_grad, local_slice_offset
from mmssl.losses.contrastive import Reduction, _reduce, info_nce
from mmssl.losses.nt_xent import _check_pair

__all__ = ["same_label_mask", "supcon"]


def same_label_mask(labels: Tensor, column_labels: Tensor, label_offset: int = 0) -> Tensor:
    """[B, M] bool: column ``j`` is a positive of row ``i`` when both are labelled (``>= 0``) with the same class,
    or when ``j == label_offset + i`` (the row's own pair, a positive labelled or not)."""
    labels, column_labels = torch.as_tensor(labels).long(), torch.as_tensor(column_labels).long()
    if labels.dim() != 1 or column_labels.dim() != 1:
        raise ValueError(f"labels must be 1-D class indices (-1: unlabelled), got shapes {list(labels.shape)} and "
                         f"{list(column_labels.shape)}")
    column_labels = column_labels.to(labels.device)
    b, m = labels.shape[0], column_labels.shape[0]
    if label_offset < 0 or label_offset + b > m:
        raise ValueError(f"label_offset={label_offset} with {b} rows does not fit {m} columns")
    mask = (labels[:, None] == column_labels[None, :]) & (labels[:, None] >= 0)
    rows = torch.arange(b, device=mask.device)
    mask[rows, rows + label_offset] = True
    return mask


def supcon(
    z1: Tensor,
    z2: Tensor,
    labels: Tensor,
    temperature: float | Tensor = 0.1,
    gather: bool = True,
    *,
    group=None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""SupCon's :math:`\mathcal{L}^{sup}_{out}` (Khosla et al. 2020, eq. 2) over two views of ``N`` images.

    Each of the ``2N'`` views of the (gathered, with gradient) batch is an anchor ``i``; ``A(i)`` is every other
    view, ``P(i) \subset A(i)`` the views of images with its label plus its own other view:

    .. math:: \ell_i = \frac{-1}{|P(i)|} \sum_{p \in P(i)} \log
              \frac{\exp(\cos(z_i, z_p) / T)}{\sum_{a \in A(i)} \exp(\cos(z_i, z_a) / T)}

    An unlabelled image (label ``-1``) is contrasted as in SimCLR: its other view is its only positive, and it
    is a negative of every other anchor. So with no labels at all this is :func:`mmssl.losses.nt_xent` exactly,
    and a batch with labels on part of the images mixes both. Two :func:`info_nce` calls, laid out as
    `nt_xent`'s (``z1`` against ``[all z2, all z1]``, ``z2`` against ``[all z1, all z2]``) with a
    ``positive_mask`` from the gathered labels and the anchor itself removed by the false-negative mask.

    Args:
        z1, z2: [N, D] projections of the two views; row ``i`` of each comes from the same image.
        labels: [N] class indices of the images, ``-1`` where unknown (or not used).
        temperature: ``T > 0`` (Khosla et al.: 0.1).
        gather: anchors and positives from every process (every process passes the same ``N``); ignored when
            torch.distributed is not initialised.
        group: process group for the gather.
        reduction: ``'mean'`` over the ``2N`` local anchors, ``'sum'`` or ``'none'`` ([2N]: ``z1`` then ``z2``).
    """
    _check_pair("z1", z1, "z2", z2)
    labels = torch.as_tensor(labels, device=z1.device).long()
    if labels.shape != (z1.shape[0],):
        raise ValueError(f"labels must be [N] = [{z1.shape[0]}] class indices (-1: unlabelled), got "
                         f"{list(labels.shape)}")
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    all1, all2 = (gather_with_grad(z1, group), gather_with_grad(z2, group)) if gather else (z1, z2)
    all_labels = gather_no_grad(labels, group) if gather else labels
    n, total = z1.shape[0], all1.shape[0]
    if total < 2:
        raise ValueError("SupCon with a single image has no negatives: use a (global) batch of at least 2 images")
    offset = local_slice_offset(n, group) if gather else 0
    rows = torch.arange(n, device=z1.device)
    # columns [other view of all images, same view of all images]; the anchor itself is never a column
    positives = same_label_mask(labels, torch.cat([all_labels, all_labels]), offset)
    positives[rows, total + offset + rows] = False
    itself = torch.zeros_like(positives)
    itself[rows, total + offset + rows] = True

    def half(q: Tensor, other: Tensor, same: Tensor) -> Tensor:
        return info_nce(q, other, extra_negatives=same, temperature=temperature, normalize=False,
                        label_offset=offset, positive_mask=positives, false_negative_mask=itself, reduction="none")

    return _reduce(torch.cat([half(z1, all2, all1), half(z2, all1, all2)]), reduction)
