"""What a frozen image backbone learned: weighted kNN and linear-probe accuracy of its features (labelled training
images as the bank / probe training set, held-out images as queries) and collapse monitors, with batch-norm
statistics recomputed exactly on training images first ("precise BN")."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from mmssl.data.image_sources import ImageTable
from mmssl.data.image_views import eval_view
from mmssl.eval.collapse import collapse_metrics
from mmssl.eval.knn import knn_accuracy
from mmssl.eval.linear_probe import linear_probe_accuracy


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
def precise_bn(backbone: nn.Module, images: torch.Tensor, s: ProbeSettings, device: torch.device,
               count: int = 2048) -> nn.Module:
    """A copy of `backbone` in eval mode whose batch-norm statistics are exact averages over (up to `count`,
    evenly spaced) `images` in the eval view. The running averages kept during training lag behind weights
    that are still moving, and their initial variance of 1 lingers for hundreds of steps on images with little
    variance (such as the world's): in eval mode they can turn a good encoder into chance."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules()):
        return backbone
    model = copy.deepcopy(backbone)
    for norm in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    rows = torch.linspace(0, len(images) - 1, min(count, len(images))).long()
    model.train()
    for i in range(0, len(rows), s.batch_size):
        model(eval_view(images[rows[i:i + s.batch_size]], s.image_size, s.mean, s.std).to(device))
    return model.eval()


@torch.no_grad()
def labelled_features(backbone: nn.Module, table: ImageTable, s: ProbeSettings, device: torch.device,
                      limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the labelled images of `table` (at most `limit`, evenly spaced), eval view, eval mode."""
    rows = (table.labels >= 0).nonzero().flatten()
    if limit is not None and len(rows) > limit:
        rows = rows[torch.linspace(0, len(rows) - 1, limit).long()]
    return image_features(backbone, table.images[rows], s, device).cpu(), table.labels[rows]


@torch.no_grad()
def image_features(backbone: nn.Module, images: torch.Tensor, s: ProbeSettings, device: torch.device) -> torch.Tensor:
    """Float features ``[N, D]`` (on `device`) of uint8 `images` in the eval view, `s.batch_size` at a time."""
    return torch.cat([backbone(eval_view(images[i:i + s.batch_size], s.image_size, s.mean, s.std).to(device)).float()
                      for i in range(0, len(images), s.batch_size)])


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
