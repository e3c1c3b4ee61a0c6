"""RotNet (Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by Predicting Image
Rotations"): every image of the batch is shown at 0, 90, 180 and 270 degrees and a classifier on the backbone's
features predicts which rotation it sees, a 4-way cross-entropy. One augmented view per image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.data.image_views import TwoViewsConfig
from mmssl.models.heads import BackboneClassifier, classifier_head
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective

ROTATIONS = 4


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[4B, C, H, W]`` (each image at 0, 90, 180, 270 degrees counter-clockwise, rotation-major) and the
    rotation labels ``[4B]`` (0..3). Square images only: a rotated image keeps its shape."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"RotNet needs square images, got {tuple(images.shape[-2:])}")
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return rotated.contiguous(memory_format=torch.channels_last), labels


def _mild_views() -> TwoViewsConfig:
    # the paper's augmentation: crops and flips only (colour is a cue rotation prediction can use freely)
    return TwoViewsConfig(preset="none", random_resized_crop=True, crop_scale=[0.5, 1.0], horizontal_flip=0.5)


@dataclass
class RotNetParams(ImageSSLParams):
    views: TwoViewsConfig = field(default_factory=_mild_views)
    head: Literal["linear", "mlp"] = "mlp"  # the rotation classifier; mlp: Linear-BN-ReLU-Linear, hidden_dim wide


@register_objective("rotnet")
class RotNet(ImageSSL):
    Params = RotNetParams
    num_views = 1

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        classifier = classifier_head(backbone.dim, p.hidden_dim if p.head == "mlp" else None, ROTATIONS)
        return BackboneClassifier(backbone, classifier)

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor | None) -> dict[str, torch.Tensor]:
        images, labels = rotate_batch(view1)
        features, logits = module(images)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "rotation_accuracy": accuracy, "embedding": features[: view1.shape[0]].detach()}
