"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"): crops
of an image are scored against learnable prototypes; each large crop's scores become codes by Sinkhorn-Knopp (an
equal split of the global batch among prototypes), and every other crop predicts those codes (swapped
prediction). Multi-crop: 2 large crops plus `small_crops` low-resolution ones, all small crops in one batched
pass. For small batches a queue of earlier embeddings joins the Sinkhorn step from `queue_start_step`; the
prototypes stay frozen for the first `freeze_prototypes_steps` optimiser steps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.data.image_views import TwoViews, ViewOverrides
from mmssl.losses.swav import sinkhorn, swapped_prediction
from mmssl.models.heads import swav_projection
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams, unwrap
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, PositiveFloat, PositiveInt, Range


@dataclass
class SwAVParams(ImageSSLParams):
    num_prototypes: PositiveInt = 3000
    temperature: PositiveFloat = 0.1
    epsilon: PositiveFloat = 0.05  # Sinkhorn's entropy weight
    sinkhorn_iterations: PositiveInt = 3
    small_crops: NonNegativeInt = 6  # low-resolution crops per image besides the 2 large ones
    small_crop_size: Annotated[int, Range(8, 1024)] = 96
    small_crop_scale: list[Annotated[float, Range(0, 1, open_low=True)]] = field(default_factory=lambda: [0.05, 0.14])
    queue_length: NonNegativeInt = 0  # embeddings kept per large crop (0: no queue)
    queue_start_step: NonNegativeInt = 0
    freeze_prototypes_steps: NonNegativeInt = 313  # the paper's first epoch

    def __post_init__(self) -> None:
        lo, hi = self.small_crop_scale if len(self.small_crop_scale) == 2 else (0, -1)
        if not 0 < lo <= hi:
            raise ValueError("objective.small_crop_scale must be [min, max] with 0 < min <= max")


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

    def setup(self, resume_dir) -> None:
        super().setup(resume_dir)
        p = self.params
        # the recipe's views (both-view keys) at the small crops' scale
        cfg = replace(p.views, crop_scale=list(p.small_crop_scale), view1=ViewOverrides(), view2=ViewOverrides())
        self.small_views = TwoViews(cfg, p.small_crop_size, self.mean, self.std)

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        projection = swav_projection(backbone.dim, p.hidden_dim, p.projection_dim)
        return SwAVModule(backbone, projection, p.projection_dim, p.num_prototypes, p.queue_length)

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = super().prepare_batch(batch)
        p = self.params
        if p.small_crops:
            images, index = self.batch_images(batch)
            crops = [self.small_views.view(images, index, self.epoch, self.recipe.seed, 0, stream=2 + i)
                     for i in range(p.small_crops)]
            out["small"] = torch.cat(crops).to(out["view1"].device, memory_format=torch.channels_last)
        return out

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p, core = self.params, unwrap(module)
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
        unwrap(module).steps_done.fill_(step)
