"""Weighted k-nearest-neighbour accuracy of frozen features (Wu et al. 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination", as used by solo-learn and lightly).

Features are L2-normalised; each test row takes its ``k`` most cosine-similar train rows, each neighbour
votes for its class with weight ``exp(sim / temperature)`` (or 1 with ``weighting="uniform"``: a plain
majority vote), and classes are ranked by their summed votes. Defaults ``k = 200``, ``temperature = 0.07``
are InstDisc's (solo-learn's default is ``k = 20``). Rows labelled ``-1`` are ignored on both sides.

Deterministic: class scores come from a one-hot matrix product (no atomic scatter), and ties between
classes go to the lower class index (stable sort). Memory is bounded: test rows are processed in chunks
so that no intermediate holds more than about ``2**24`` elements (64 MB in float32) unless asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -1
_CHUNK_ELEMENTS = 2**24


def _labelled(features: Tensor, labels: Tensor | Sequence[int], name: str) -> tuple[Tensor, Tensor]:
    """Rows of `features` whose label is not -1, with their labels (int64, on the features' device)."""
    labels = torch.as_tensor(labels, device=features.device).long()
    if features.ndim != 2 or labels.ndim != 1 or len(labels) != len(features):
        got = f"{tuple(features.shape)} and {tuple(labels.shape)}"
        raise ValueError(f"{name}: need [N, D] features and N labels, got {got}")
    if (labels < IGNORE).any():
        raise ValueError(f"{name}: labels must be >= 0 (or -1 to ignore a row)")
    keep = labels != IGNORE
    return features[keep], labels[keep]


def _num_classes(num_classes: int | None, *labels: Tensor) -> int:
    """`num_classes` checked against the labels, or inferred as max label + 1."""
    top = max((int(y.max()) for y in labels if y.numel()), default=-1) + 1
    if num_classes is None:
        return max(top, 1)
    if top > num_classes:
        raise ValueError(f"label {top - 1} is out of range for num_classes={num_classes}")
    return num_classes


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    weighting: str = "exp",
    chunk_size: int | None = None,
) -> Tensor:
    """Class scores [M, num_classes] of each test row (all rows labelled; see the module docstring)."""
    if k < 1 or temperature <= 0 or weighting not in ("exp", "uniform"):
        got = f"{k}, {temperature}, {weighting!r}"
        raise ValueError(f"need k >= 1, temperature > 0 and weighting 'exp' or 'uniform'; got {got}")
    if len(train_features) == 0:
        raise ValueError("kNN needs at least one labelled train row")
    train = F.normalize(train_features.float(), dim=-1)
    train_labels = torch.as_tensor(train_labels, device=train.device).long()
    k = min(k, len(train))
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(len(train), k * num_classes))
    out = []
    for start in range(0, len(test_features), chunk_size):
        q = F.normalize(test_features[start : start + chunk_size].to(train.device).float(), dim=-1)
        sims, idx = (q @ train.T).topk(k, dim=1)  # sorted: column 0 is each row's largest similarity
        if weighting == "exp":  # exp(sim / T), scaled per row by exp(-max / T) so small T cannot overflow
            weights = ((sims - sims[:, :1]) / temperature).exp()
        else:
            weights = torch.ones_like(sims)
        votes = F.one_hot(train_labels[idx], num_classes).to(weights.dtype)  # [b, k, C]
        out.append(torch.bmm(weights.unsqueeze(1), votes).squeeze(1))
    return torch.cat(out) if out else torch.zeros(0, num_classes, device=train.device)


def _topk_accuracy(scores: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy; class ties go to the lower index."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    hits = order == labels[:, None]
    out = {f"{prefix}top1": hits[:, 0].float().mean().item()}
    if scores.shape[1] > 5:
        out[f"{prefix}top5"] = hits[:, :5].any(1).float().mean().item()
    return out


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor | Sequence[int],
    test_features: Tensor,
    test_labels: Tensor | Sequence[int],
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    weighting: str = "exp",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Weighted kNN accuracy of test rows against train rows (rows labelled -1 ignored).

    Returns ``knn_top1`` (and ``knn_top5`` when there are more than 5 classes), ``knn_k`` (the k used:
    at most the number of train rows), ``knn_num_train`` and ``knn_num_test``. `num_classes` defaults to
    the largest label + 1; a test class absent from train counts as wrong.
    """
    train, ytrain = _labelled(train_features, train_labels, "train")
    test, ytest = _labelled(test_features, test_labels, "test")
    if len(test) == 0:
        raise ValueError("kNN needs at least one labelled test row")
    c = _num_classes(num_classes, ytrain, ytest)
    scores = knn_scores(train, ytrain, test, c, k, temperature, weighting, chunk_size)
    out = _topk_accuracy(scores, ytest.to(scores.device), "knn_")
    out.update(knn_k=float(min(k, len(train))), knn_num_train=float(len(train)), knn_num_test=float(len(test)))
    return out
