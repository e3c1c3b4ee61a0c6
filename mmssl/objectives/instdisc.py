"""InstDisc (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"): every
training image is its own class. A 128-d normalised embedding of one augmented view is pulled towards the
image's entry in a memory bank and away from entries sampled uniformly from it, with NCE (the paper's loss,
log Z estimated once from the first batch) or the softmax over the positive and the samples; the entry is
then moved towards the new embedding by momentum. Optional proximal term: lambda * ||v - bank[i]||^2.

Negatives are drawn once per step for the whole batch (`negatives: shared`, one matrix product) or per image
as in the paper's code (`per_image`, a [B, K, D] gather). On several processes the bank is sharded (each holds
its slice of the rows; `shard_bank`), which needs shared negatives."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.errors import RecipeError
from mmssl.losses.instance import bank_logits, estimate_log_z, instance_nce_loss, instance_softmax_loss
from mmssl.distributed import gather_no_grad, world_size
from mmssl.models.memory_bank import MemoryBank
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, PositiveFloat, PositiveInt, Range


@dataclass
class InstDiscParams(ImageSSLParams):
    temperature: PositiveFloat = 0.07
    num_negatives: PositiveInt = 4096  # bank entries sampled per image
    loss: Literal["nce", "softmax"] = "nce"
    bank_momentum: Annotated[float, Range(0, 1, open_high=True)] = 0.5
    proximal: NonNegativeFloat = 0.0  # lambda of the proximal regularisation (the paper: 30 on ImageNet)
    negatives: Literal["shared", "per_image"] = "shared"
    shard_bank: bool = True  # several processes: each holds 1/W of the bank (False: every process holds it all)


class InstDiscModule(nn.Module):
    def __init__(self, backbone: Backbone, dim: int, bank_size: int, bank_momentum: float, seed: int,
                 shard_bank: bool = False):
        super().__init__()
        self.backbone = backbone
        self.embed = nn.Linear(backbone.dim, dim)
        self.bank = MemoryBank(bank_size, dim, bank_momentum, seed, sharded=shard_bank)
        self.bank.keep_out_of_ddp(self, "bank")
        self.register_buffer("log_z", torch.tensor(math.nan))  # NCE's normalising constant, set on the first step

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.backbone(images)).float(), dim=1)


@register_objective("instdisc")
class InstDisc(ImageSSL):
    Params = InstDiscParams
    num_views = 1

    def stream_refusal(self) -> str | None:
        return "its memory bank keeps one row per training image, so it needs every image's row up front"

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        if p.shard_bank and p.negatives == "per_image" and world_size() > 1:
            raise RecipeError("objective.negatives: per_image needs the whole memory bank on every process; set "
                              "objective.negatives: shared (one set of negatives per step) or objective.shard_bank: "
                              "false")
        return InstDiscModule(backbone, p.projection_dim, len(self.train), p.bank_momentum, self.recipe.seed,
                              shard_bank=p.shard_bank)

    def describe(self) -> dict[str, Any]:
        bank = self.module.bank
        return {**super().describe(), "bank_rows": len(bank), "bank_rows_per_process": bank.rows_held}

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        core = self.core(module)
        index = batch["index"]
        query = module(batch["view1"])
        bank = core.bank
        positive = bank.get(index)
        if p.negatives == "shared":
            negatives = bank.sample_shared(p.num_negatives).to(query.device)
        else:
            negatives = bank.get(bank.sample(query.shape[0], p.num_negatives, query.device))
        logits = bank_logits(query, positive, negatives, p.temperature)
        if p.loss == "nce":
            if torch.isnan(core.log_z):  # from every process's first batch: the same constant everywhere
                core.log_z.fill_(float(estimate_log_z(gather_no_grad(logits[:, 1:].detach()), len(bank))))
            loss = instance_nce_loss(logits, len(bank), core.log_z)
        else:
            loss = instance_softmax_loss(logits)
        out = {"loss": loss}
        if p.proximal:
            proximal = p.proximal * (query - positive).pow(2).sum(dim=1).mean()
            out["loss"] = loss + proximal
            out["proximal"] = proximal.detach()
        out["positive_similarity"] = (logits[:, 0].detach() * p.temperature).mean()
        out["embedding"] = query.detach()
        if module.training:
            bank.update(index, query)
        return out
