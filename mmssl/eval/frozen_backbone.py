"""What a frozen image backbone learned: weighted kNN and linear-probe accuracy of its features (labelled training
images as the bank / probe training set, held-out images as queries) and collapse monitors, with batch-norm
statistics recomputed exactly on training images first (`mmssl.models.image_features.precise_bn`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmssl.data.image_sources import ImageTable
from mmssl.eval.collapse import collapse_metrics
from mmssl.eval.knn import knn_accuracy
from mmssl.eval.linear_probe import linear_probe_accuracy
from mmssl.models.image_features import image_features, precise_bn


@dataclass
class ProbeSettings:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_probe: bool = True
    max_bank: int | None = 5000  # labelled training images used as kNN bank and probe training set
    num_classes: int | None = None
    seed: int = 0
    batch_size: int = 256


@torch.no_grad()
def labelled_features(backbone: nn.Module, table: ImageTable, s: ProbeSettings, device: torch.device,
                      limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the labelled images of `table` (at most `limit`, evenly spaced), eval view, eval mode."""
    rows = (table.labels >= 0).nonzero().flatten()
    if limit is not None and len(rows) > limit:
        rows = rows[torch.linspace(0, len(rows) - 1, limit).long()]
    return image_features(backbone, table.images[rows], s, device).cpu(), table.labels[rows]


def frozen_backbone_metrics(backbone: nn.Module, train: ImageTable, evaluation: ImageTable, s: ProbeSettings,
                            device: torch.device, diagnostics: dict | None = None) -> dict[str, float]:
    """kNN (and linear-probe) accuracy and the features' collapse monitors (``feature_std_sqrt_d``,
    ``feature_effective_rank``, ``feature_uniformity``, on centred features: ReLU features share a large
    mean direction, so their raw spread says little); `diagnostics`, if given, receives their spectrum. The
    backbone itself is left untouched."""
    was_training = backbone.training
    try:
        model = precise_bn(backbone, train.images, s, device)
        model.eval()
        bank, bank_labels = labelled_features(model, train, s, device, s.max_bank)
        queries, labels = labelled_features(model, evaluation, s, device)
    finally:
        backbone.train(was_training)
    out = knn_accuracy(bank, bank_labels, queries, labels, k=s.knn_k, temperature=s.knn_temperature,
                       num_classes=s.num_classes)
    if s.linear_probe:
        out.update(linear_probe_accuracy(bank, bank_labels, queries, labels, num_classes=s.num_classes, seed=s.seed))
    metrics = collapse_metrics(queries - queries.mean(dim=0, keepdim=True))
    out.update(feature_std_sqrt_d=metrics["feature_std_sqrt_d"], feature_effective_rank=metrics["effective_rank"],
               feature_uniformity=metrics["uniformity"])
    if diagnostics is not None:  # for the report: the centred features' spectrum
        from mmssl.eval.embeddings import spectrum

        diagnostics["spectrum"] = spectrum(queries - queries.mean(dim=0, keepdim=True))
    return {k: float(v) for k, v in out.items()}
