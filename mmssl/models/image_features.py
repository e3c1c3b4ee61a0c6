"""Features of a frozen image backbone on uint8 images in the evaluation view, and batch-norm statistics
recomputed exactly on training images first ("precise BN"): used by evaluation (kNN, linear probe), by methods
that cluster features (DeepCluster) and by export."""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import nn

from mmssl.data.image_views import eval_view


class EvalViewSettings(Protocol):
    """How images are shown to a frozen backbone (e.g. `mmssl.eval.frozen_backbone.ProbeSettings`)."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int


@torch.no_grad()
def precise_bn(backbone: nn.Module, images: torch.Tensor, s: EvalViewSettings, device: torch.device,
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
def image_features(backbone: nn.Module, images: torch.Tensor, s: EvalViewSettings, device: torch.device) -> torch.Tensor:
    """Float features ``[N, D]`` (on `device`) of uint8 `images` in the eval view, `s.batch_size` at a time."""
    return torch.cat([backbone(eval_view(images[i:i + s.batch_size], s.image_size, s.mean, s.std).to(device)).float()
                      for i in range(0, len(images), s.batch_size)])
