"""Denoising autoencoder (Vincent, Larochelle, Bengio & Manzagol 2008): the backbone sees a corrupted image
(masking noise, salt-and-pepper or Gaussian noise: `mmssl.losses.denoising`) and a light decoder reconstructs
the clean image from its pooled features alone, so the representation must hold what the corruption hid. The
exported encoder is the backbone (timm); the decoder is dropped, as in the paper's stacked use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.data.image_views import TwoViewsConfig
from mmssl.losses.denoising import Corruption, corrupt, denoising_loss
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, Range


def _mild_views() -> TwoViewsConfig:
    # the corruption is the pretext task: crops and flips only add data
    return TwoViewsConfig(preset="none", random_resized_crop=True, crop_scale=[0.5, 1.0], horizontal_flip=0.5)


@dataclass
class DenoisingAutoencoderParams(ImageSSLParams):
    views: TwoViewsConfig = field(default_factory=_mild_views)
    corruption: Corruption = "masking"
    # masking / salt_pepper: the fraction of pixels corrupted; gaussian: the noise's standard deviation on [0, 1]
    corruption_level: Annotated[float, Range(0, 1, open_low=True)] = 0.25
    corrupted_weight: NonNegativeFloat = 1.0  # the paper's alpha: the squared error's weight on corrupted pixels
    untouched_weight: NonNegativeFloat = 1.0  # beta: on pixels the corruption left alone
    # the decoder reconstructs the clean image at this size (default: image_size); smaller is a lighter decoder
    output_size: Annotated[int, Range(4, 1024)] | None = None


class DenoisingAutoencoderModule(nn.Module):
    def __init__(self, backbone: Backbone, hidden_dim: int, output_size: int):
        super().__init__()
        self.backbone, self.output_size = backbone, output_size
        self.decoder = nn.Sequential(nn.Linear(backbone.dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, 3 * output_size * output_size))

    def forward(self, corrupted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(corrupted)
        return features, self.decoder(features).view(-1, 3, self.output_size, self.output_size)


@register_objective("denoising_autoencoder")
class DenoisingAutoencoder(ImageSSL):
    Params = DenoisingAutoencoderParams
    num_views = 1

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        return DenoisingAutoencoderModule(backbone, p.hidden_dim, p.output_size or p.image_size)

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        view = batch["view1"]
        mean, std = self.pixel_stats(view.device)
        clean = (view.float() * std + mean).clamp(0, 1)  # the view in [0, 1]
        noisy, corrupted = corrupt(clean, p.corruption, p.corruption_level)
        inputs = ((noisy - mean) / std).to(view.dtype).contiguous(memory_format=torch.channels_last)
        features, prediction = module(inputs)
        size = self.core(module).output_size
        target = view.float() if size == view.shape[-1] else F.interpolate(view.float(), size=size, mode="area")
        mask = corrupted if size == view.shape[-1] else F.interpolate(corrupted, size=size, mode="area")
        loss = denoising_loss(prediction, target, mask, p.corrupted_weight, p.untouched_weight)
        return {"loss": loss, "embedding": features.detach()}
