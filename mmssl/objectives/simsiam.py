"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning"): a predictor MLP maps one view's
projection onto the other's, whose gradient is stopped; no negatives, no momentum encoder. Collapse is the
known failure: the eval logs the per-dimension std of the embeddings to watch it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmssl.losses import symmetric_negative_cosine
from mmssl.models.heads import simsiam_prediction, simsiam_projection
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams, lr_scaled_groups
from mmssl.registry import register_objective
from mmssl.schema import PositiveFloat, PositiveInt


@dataclass
class SimSiamParams(ImageSSLParams):
    projection_dim: PositiveInt = 512
    prediction_hidden_dim: PositiveInt = 128  # SimSiam's bottleneck (a quarter of the projection)
    predictor_lr_scale: PositiveFloat = 1.0


class SimSiamModule(nn.Module):
    def __init__(self, backbone: Backbone, projection: nn.Module, prediction: nn.Module):
        super().__init__()
        self.backbone, self.projection, self.prediction = backbone, projection, prediction

    def forward(self, view1: torch.Tensor, view2: torch.Tensor):
        z = self.projection(self.backbone(torch.cat([view1, view2])))
        p = self.prediction(z)
        return (*p.chunk(2), *z.chunk(2))


@register_objective("simsiam")
class SimSiam(ImageSSL):
    Params = SimSiamParams

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        return SimSiamModule(backbone, simsiam_projection(backbone.dim, p.hidden_dim, p.projection_dim),
                             simsiam_prediction(p.projection_dim, p.prediction_hidden_dim, p.projection_dim))

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        p1, p2, z1, z2 = module(view1, view2)  # the targets z are detached inside the loss
        return {"loss": symmetric_negative_cosine(p1, p2, z1, z2, form="simsiam"), "embedding": z1}

    def param_groups(self, module: nn.Module) -> list[dict]:
        return lr_scaled_groups(module, {"prediction": self.params.predictor_lr_scale})
