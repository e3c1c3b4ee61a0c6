"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"): crops
of an image are scored against learnable prototypes; each large crop's scores become codes by Sinkhorn-Knopp (an
equal split of the global batch among prototypes), and every other crop predicts those codes (swapped
prediction). Multi-crop (from the image base class): 2 large crops plus `small_crops` low-resolution ones,
all small crops in one batched pass. For small batches a queue of earlier embeddings joins the Sinkhorn step from `queue_start_step`; the
prototypes stay frozen for the first `freeze_prototypes_steps` optimiser steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.losses.swav import sinkhorn, swapped_prediction
from mmssl.models.heads import swav_projection
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams, MultiCropParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, PositiveFloat, PositiveInt


@dataclass
class SwAVParams(MultiCropParams, ImageSSLParams):  # this order lists the multi-crop keys after the image keys
    num_prototypes: PositiveInt = 3000
    temperature: PositiveFloat = 0.1
    epsilon: PositiveFloat = 0.05  # Sinkhorn's entropy weight
    sinkhorn_iterations: PositiveInt = 3
    queue_length: NonNegativeInt = 0  # embeddings kept per large crop (0: no queue)
    queue_start_step: NonNegativeInt = 0
    freeze_prototypes_steps: NonNegativeInt = 313  # the paper's first epoch


class SwAVModule(nn.Module):
    def __init__(self, backbone: Backbone, projection: nn.Module, dim: int, num_prototypes: int, queue_length: int):
        super().__init__()
        self.backbone, self.projection = backbone, projection
        self.prototypes = nn.Linear(dim, num_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(2, queue_length, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # for the prototypes' freeze

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.backbone(images)).float(), dim=1)

    def forward(self, large: torch.Tensor, small: torch.Tensor | None,
                freeze_prototypes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of all crops and their prototype scores (no gradient to the prototypes if frozen)."""
        z = self.embed(large)
        if small is not None:
            z = torch.cat([z, self.embed(small)])
        return z, self.scores(z, freeze_prototypes)

    def scores(self, z: torch.Tensor, freeze_prototypes: bool = False) -> torch.Tensor:
        weight = self.prototypes.weight.detach() if freeze_prototypes else self.prototypes.weight
        return z @ weight.t().float()


@register_objective("swav")
class SwAV(ImageSSL):
    Params = SwAVParams
    num_views = 2

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        projection = swav_projection(backbone.dim, p.hidden_dim, p.projection_dim)
        return SwAVModule(backbone, projection, p.projection_dim, p.num_prototypes, p.queue_length)

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p, core = self.params, self.core(module)
        with torch.no_grad():  # prototypes on the unit sphere before every step, as the paper's code
            core.prototypes.weight.copy_(F.normalize(core.prototypes.weight, dim=1))
        b = batch["view1"].shape[0]
        frozen = int(core.steps_done) < p.freeze_prototypes_steps  # no gradient reaches the prototypes yet
        z, scores = module(torch.cat([batch["view1"], batch["view2"]]), batch.get("small"), frozen)
        crops = scores.shape[0] // b
        use_queue = p.queue_length > 0 and int(core.steps_done) >= p.queue_start_step
        loss = scores.new_zeros(())
        for i in range(2):
            own = scores[i * b : (i + 1) * b].detach()
            if use_queue and int(core.queue_filled) >= p.queue_length:
                own = torch.cat([core.scores(core.queue[i]).detach(), own])
            codes = sinkhorn(own, p.epsilon, p.sinkhorn_iterations)[-b:]
            others = [v for v in range(crops) if v != i]
            loss = loss + sum(swapped_prediction(codes, scores[v * b : (v + 1) * b], p.temperature)
                              for v in others) / len(others)
        if use_queue and module.training:
            with torch.no_grad():
                for i in range(2):
                    fresh = z[i * b : (i + 1) * b].detach()[: p.queue_length]
                    core.queue[i] = torch.cat([fresh, core.queue[i]])[: p.queue_length]
                core.queue_filled.add_(b)
        return {"loss": loss / 2, "embedding": z[:b].detach()}

    def after_optimizer_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        super().after_optimizer_step(module, step, total_steps)
        self.core(module).steps_done.fill_(step)
