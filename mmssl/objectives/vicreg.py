"""VICReg (Bardes, Ponce & LeCun 2022): a backbone and an expander MLP embed two views of each image; the loss
(`mmssl.losses.vicreg`) keeps the views' embeddings close, each dimension's spread over the batch above a
floor, and the dimensions decorrelated. No negatives, momentum encoder or predictor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmssl.losses.vicreg import vicreg_loss
from mmssl.models.heads import MLPHead
from mmssl.models.vision import Backbone
from mmssl.errors import RecipeError
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, PositiveFloat, PositiveInt


@dataclass
class VICRegParams(ImageSSLParams):
    projection_dim: PositiveInt = 2048  # the expander's width (8192 in the paper's ResNet-50 runs)
    hidden_dim: PositiveInt = 2048
    invariance_weight: NonNegativeFloat = 25.0  # the paper's lambda
    variance_weight: NonNegativeFloat = 25.0  # mu
    covariance_weight: NonNegativeFloat = 1.0  # nu
    gamma: PositiveFloat = 1.0  # the standard deviation each dimension is kept above
    gather: bool = True  # variance and covariance over the global batch (every process's rows)


class VICRegModule(nn.Module):
    def __init__(self, backbone: Backbone, expander: nn.Module):
        super().__init__()
        self.backbone, self.expander = backbone, expander

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.expander(self.backbone(torch.cat([view1, view2])))  # one pass: batch norm sees both views
        return z.chunk(2)


@register_objective("vicreg")
class VICReg(ImageSSL):
    Params = VICRegParams

    def check(self, world_size: int) -> None:
        if self.recipe.train.batch_size * (world_size if self.params.gather else 1) < 2:
            raise RecipeError(f"train.batch_size={self.recipe.train.batch_size}: VICReg's variance and covariance "
                              "are batch statistics, so it needs at least 2 images per step; raise train.batch_size")

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        # the paper's expander: Linear-BN-ReLU, Linear-BN-ReLU, Linear
        expander = MLPHead([(backbone.dim, p.hidden_dim, True, nn.ReLU()), (p.hidden_dim, p.hidden_dim, True, nn.ReLU()),
                            (p.hidden_dim, p.projection_dim, False, None)])
        return VICRegModule(backbone, expander)

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        z1, z2 = module(view1, view2)
        out = vicreg_loss(z1, z2, invariance_weight=p.invariance_weight, variance_weight=p.variance_weight,
                          covariance_weight=p.covariance_weight, gamma=p.gamma, gather=p.gather)
        return {**out, "embedding": z1}
