"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"): two views
of each image, a projection MLP, and NT-Xent over the global batch (negatives from every process, with
gradient)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmssl.losses import nt_xent
from mmssl.models.heads import simclr_projection
from mmssl.models.vision import Backbone
from mmssl.objectives._image_ssl import ImageSSL, ImageSSLParams, check_pairs_per_step
from mmssl.registry import register_objective
from mmssl.schema import PositiveFloat, PositiveInt


@dataclass
class SimCLRParams(ImageSSLParams):
    temperature: PositiveFloat = 0.5
    projection_layers: PositiveInt = 2  # 2 in SimCLR v1, 3 in v2
    gather: bool = True  # negatives from every process


class SimCLRModule(nn.Module):
    def __init__(self, backbone: Backbone, projection: nn.Module):
        super().__init__()
        self.backbone, self.projection = backbone, projection

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection(self.backbone(torch.cat([view1, view2])))  # one pass: batch norm sees both views
        return z.chunk(2)


@register_objective("simclr")
class SimCLR(ImageSSL):
    Params = SimCLRParams

    def check(self, world: int) -> None:
        check_pairs_per_step(self.recipe, world if self.params.gather else 1, "SimCLR")

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        return SimCLRModule(backbone, simclr_projection(backbone.dim, p.hidden_dim, p.projection_dim,
                                                        num_layers=p.projection_layers))

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        z1, z2 = module(view1, view2)
        return {"loss": nt_xent(z1, z2, self.params.temperature, gather=self.params.gather), "embedding": z1}
