"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): an online network (backbone, projection, predictor)
predicts a momentum target network's projection of the other view; no negatives. The target follows the
online weights by an exponential moving average whose rate goes from 0.996 to 1 on a cosine over the run,
and gets no gradient."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mmssl.data.image_views import TwoViewsConfig
from mmssl.losses import symmetric_negative_cosine
from mmssl.models.heads import byol_prediction, byol_projection
from mmssl.models.momentum import make_momentum_copy
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams, MomentumParams, lr_scaled_groups
from mmssl.registry import register_objective
from mmssl.schema import PositiveFloat, PositiveInt


@dataclass
class BYOLParams(ImageSSLParams, MomentumParams):
    views: TwoViewsConfig = field(default_factory=lambda: TwoViewsConfig(preset="byol"))
    prediction_hidden_dim: PositiveInt = 512
    predictor_lr_scale: PositiveFloat = 1.0


class BYOLModule(nn.Module):
    def __init__(self, backbone: Backbone, projection: nn.Module, prediction: nn.Module):
        super().__init__()
        self.backbone, self.projection, self.prediction = backbone, projection, prediction
        self.target_backbone = make_momentum_copy(backbone)
        self.target_projection = make_momentum_copy(projection)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor):
        images = torch.cat([view1, view2])
        p = self.prediction(self.projection(self.backbone(images)))
        with torch.no_grad():
            z = self.target_projection(self.target_backbone(images))
        return (*p.chunk(2), *z.chunk(2))


@register_objective("byol")
class BYOL(ImageSSL):
    Params = BYOLParams

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        return BYOLModule(backbone, byol_projection(backbone.dim, p.hidden_dim, p.projection_dim),
                          byol_prediction(p.projection_dim, p.prediction_hidden_dim, p.projection_dim))

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        p1, p2, z1, z2 = module(view1, view2)
        return {"loss": symmetric_negative_cosine(p1, p2, z1, z2, form="byol"), "embedding": p1}

    def param_groups(self, module: nn.Module) -> list[dict]:
        return lr_scaled_groups(module, {"prediction": self.params.predictor_lr_scale})

    def momentum_pairs(self, core: BYOLModule) -> list[tuple[nn.Module, nn.Module]]:
        return [(core.backbone, core.target_backbone), (core.projection, core.target_projection)]
