"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"): two views
of each image, a projection MLP, and NT-Xent over the global batch (negatives from every process, with
gradient). Optionally a memory bank (InstDisc's, `mmssl.models.memory_bank`) of every image's past view-1
embedding adds `bank_negatives` entries per step as extra negatives, without gradient."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.losses import nt_xent
from mmssl.losses.hard_negatives import NegativeShaping
from mmssl.models.heads import simclr_projection
from mmssl.models.memory_bank import MemoryBank
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams, check_pairs_per_step
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, PositiveFloat, PositiveInt, Range


@dataclass
class SimCLRParams(ImageSSLParams):
    temperature: PositiveFloat = 0.5
    projection_layers: PositiveInt = 2  # 2 in SimCLR v1, 3 in v2
    gather: bool = True  # negatives from every process
    bank_negatives: NonNegativeInt = 0  # memory-bank entries drawn per step as extra negatives (0: no bank)
    bank_momentum: Annotated[float, Range(0, 1, open_high=True)] = 0.5
    shard_bank: bool = True  # several processes: each holds 1/W of the bank
    negative_shaping: NegativeShaping = field(default_factory=NegativeShaping)  # MoCHi, debiased, hardness-weighted


class SimCLRModule(nn.Module):
    def __init__(self, backbone: Backbone, projection: nn.Module, bank: MemoryBank | None = None):
        super().__init__()
        self.backbone, self.projection, self.bank = backbone, projection, bank
        if bank is not None:
            bank.keep_out_of_ddp(self, "bank")

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection(self.backbone(torch.cat([view1, view2])))  # one pass: batch norm sees both views
        return z.chunk(2)


@register_objective("simclr")
class SimCLR(ImageSSL):
    Params = SimCLRParams

    def check(self, world_size: int) -> None:
        check_pairs_per_step(self.recipe, world_size if self.params.gather else 1, "SimCLR")

    def stream_refusal(self) -> str | None:
        if self.params.bank_negatives:
            return "objective.bank_negatives keeps a memory bank row per training image (set it to 0 to stream)"
        return None

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        bank = (MemoryBank(len(self.train), p.projection_dim, p.bank_momentum, self.recipe.seed, p.shard_bank)
                if p.bank_negatives else None)
        return SimCLRModule(backbone, simclr_projection(backbone.dim, p.hidden_dim, p.projection_dim,
                                                        num_layers=p.projection_layers), bank)

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        z1, z2 = module(batch["view1"], batch["view2"])
        bank = self.core(module).bank
        extra = bank.sample_shared(p.bank_negatives).to(z1.device) if bank is not None else None
        loss = nt_xent(z1, z2, p.temperature, gather=p.gather, extra_negatives=extra, shaping=p.negative_shaping)
        if bank is not None and module.training:
            bank.update(batch["index"], F.normalize(z1.detach().float(), dim=1))
        return {"loss": loss, "embedding": z1}
