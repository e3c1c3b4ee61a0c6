"""The colourisation pointer of Vondrick et al. 2018 ("Tracking Emerges by Colorizing Videos"): every position i of
a target frame points at the positions j of a reference frame with weights
``A_ij = softmax_j(sim(f_i, g_j) / temperature)`` and takes ``sum_j A_ij c_j`` of what the reference holds there
(colour classes while training, instance labels when tracking). ``sim`` is the dot product, or minus the squared
distance (``metric="l2"``, for raw pixels).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Metric = Literal["dot", "l2"]


def pointer_weights(query: Tensor, reference: Tensor, temperature: float, metric: Metric = "dot") -> Tensor:
    """``[B, Nq, Nr]`` attention of every query position over the reference positions, from feature maps
    ``[B, D, h, w]`` (or ``[B, D, N]``)."""
    q, r = query.flatten(2).transpose(1, 2).float(), reference.flatten(2).float()  # [B, Nq, D], [B, D, Nr]
    logits = q @ r
    if metric == "l2":  # -|q - r|^2 = 2 q.r - |q|^2 - |r|^2, and |q|^2 is constant over the reference
        logits = 2 * logits - r.pow(2).sum(dim=1, keepdim=True)
    return torch.softmax(logits / temperature, dim=-1)


def point(weights: Tensor, values: Tensor) -> Tensor:
    """Copy `values` ``[B, C, h, w]`` (or ``[B, C, N]``) of the reference through `weights` ``[B, Nq, Nr]``
    -> ``[B, C, Nq]``."""
    return values.flatten(2).float() @ weights.transpose(1, 2)


def colour_pointer_loss(target: Tensor, reference: Tensor, reference_colours: Tensor, target_colours: Tensor,
                        num_colours: int, temperature: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the target frame's colour classes ``[B, h, w]`` under the distribution the pointer copies
    from the reference's classes ``[B, h, w]`` -> (mean loss, accuracy of the most likely class)."""
    weights = pointer_weights(target, reference, temperature)
    onehot = F.one_hot(reference_colours.flatten(1), num_colours).transpose(1, 2).float()  # [B, K, Nr]
    predicted = point(weights, onehot)  # [B, K, Nq]: probabilities
    wanted = target_colours.flatten(1)
    loss = F.nll_loss(predicted.clamp_min(1e-8).log(), wanted)
    accuracy = (predicted.argmax(dim=1) == wanted).float().mean()
    return loss, accuracy


def propagate(features: Tensor, first: Tensor, temperature: float, reference: Literal["first", "previous"] = "previous",
              metric: Metric = "dot") -> Tensor:
    """Soft labels ``[T, C, h, w]`` of every frame of a video, from its feature maps ``[T, D, h, w]`` and the first
    frame's labels ``[C, h, w]``: each frame points at frame 0 (``reference="first"``) or at the previous frame
    and copies the labels predicted there (``"previous"``, Vondrick's recursion)."""
    labels = [first.float()]
    for t in range(1, features.shape[0]):
        ref = 0 if reference == "first" else t - 1
        weights = pointer_weights(features[t : t + 1], features[ref : ref + 1], temperature, metric)
        labels.append(point(weights, labels[ref][None]).view_as(first))
    return torch.stack(labels)
