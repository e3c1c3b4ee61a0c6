"""MoCo for images: v2 (Chen, Fan, Girshick & He 2020; a queue of momentum-encoded keys as negatives) or v3-style
(Chen, Xie & He 2021; a predictor, the symmetric loss over the keys of the global batch, no queue). The key
encoder follows the query encoder by a momentum average once per optimiser step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import nn

from mmssl.distributed import gather_no_grad
from mmssl.losses import moco_v2_loss, moco_v3_loss
from mmssl.losses.hard_negatives import NegativeShaping
from mmssl.models.heads import moco_v2_projection, moco_v3_prediction, moco_v3_projection
from mmssl.models.momentum import EmbeddingQueue, make_momentum_copy
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import (ImageSSL, ImageSSLParams, MomentumParams, check_pairs_per_step,
                                         lr_scaled_groups)
from mmssl.registry import register_objective
from mmssl.schema import PositiveFloat, PositiveInt, Range


@dataclass
class MoCoParams(ImageSSLParams, MomentumParams):
    variant: Literal["v2", "v3"] = "v2"
    temperature: PositiveFloat = 0.2
    queue_size: PositiveInt = 4096  # v2
    symmetric: bool = True  # v2: both views as queries (v3 is always symmetric)
    momentum: Annotated[float, Range(0, 1)] = 0.99
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    prediction_hidden_dim: PositiveInt = 512  # v3
    gather: bool = True  # keys from every process (the queue is then the same on every process)
    negative_shaping: NegativeShaping = field(default_factory=NegativeShaping)  # MoCHi, debiased, hardness-weighted


class MoCoModule(nn.Module):
    def __init__(self, backbone: Backbone, projection: nn.Module, prediction: nn.Module | None, queue_size: int | None,
                 dim: int):
        super().__init__()
        self.backbone, self.projection = backbone, projection
        self.prediction = prediction if prediction is not None else nn.Identity()
        self.key_backbone = make_momentum_copy(backbone)
        self.key_projection = make_momentum_copy(projection)
        self.queue = EmbeddingQueue(dim, queue_size) if queue_size else None

    def forward(self, view1: torch.Tensor, view2: torch.Tensor):
        images = torch.cat([view1, view2])
        q = self.prediction(self.projection(self.backbone(images)))
        with torch.no_grad():
            k = self.key_projection(self.key_backbone(images))
        return (*q.chunk(2), *k.chunk(2))


@register_objective("moco")
class MoCo(ImageSSL):
    Params = MoCoParams

    def check(self, world_size: int) -> None:
        if self.params.variant == "v3":
            check_pairs_per_step(self.recipe, world_size if self.params.gather else 1, "MoCo v3")

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        if p.variant == "v2":
            return MoCoModule(backbone, moco_v2_projection(backbone.dim, p.hidden_dim, p.projection_dim), None,
                              p.queue_size, p.projection_dim)
        return MoCoModule(backbone, moco_v3_projection(backbone.dim, p.hidden_dim, p.projection_dim),
                          moco_v3_prediction(p.projection_dim, p.prediction_hidden_dim, p.projection_dim), None,
                          p.projection_dim)

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        p, core = self.params, self.core(module)
        q1, q2, k1, k2 = module(view1, view2)
        if p.variant == "v3":
            return {"loss": moco_v3_loss(q1, q2, k1, k2, p.temperature, gather=p.gather, shaping=p.negative_shaping), "embedding": q1}
        queue = core.queue
        if len(queue) == 0:  # the first step: this batch's keys are the first negatives
            queue.enqueue(self._all(torch.cat([k1, k2])))
        negatives = queue.negatives
        loss = moco_v2_loss(q1, k2, negatives, p.temperature, shaping=p.negative_shaping)
        if p.symmetric:
            loss = (loss + moco_v2_loss(q2, k1, negatives, p.temperature, shaping=p.negative_shaping)) / 2
        queue.enqueue(self._all(torch.cat([k2, k1]) if p.symmetric else k2))  # the step's keys, after the loss
        return {"loss": loss, "embedding": q1}

    def _all(self, keys: torch.Tensor) -> torch.Tensor:
        return gather_no_grad(keys) if self.params.gather else keys

    def param_groups(self, module: nn.Module) -> list[dict]:
        return lr_scaled_groups(module, {})

    def momentum_pairs(self, core: MoCoModule) -> list[tuple[nn.Module, nn.Module]]:
        return [(core.backbone, core.key_backbone), (core.projection, core.key_projection)]
