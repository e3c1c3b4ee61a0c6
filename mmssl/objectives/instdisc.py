"""InstDisc (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"): every
training image is its own class. A 128-d normalised embedding of one augmented view is pulled towards the
image's entry in a memory bank and away from entries sampled uniformly from it, with NCE (the paper's loss,
log Z estimated once from the first batch) or the softmax over the positive and the samples; the entry is
then moved towards the new embedding by momentum. Optional proximal term: lambda * ||v - bank[i]||^2."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.losses.instance import bank_logits, estimate_log_z, instance_nce_loss, instance_softmax_loss
from mmssl.models.memory_bank import MemoryBank
from mmssl.models.vision import Backbone
from mmssl.objectives._image_ssl import ImageSSL, ImageSSLParams, unwrap
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, PositiveFloat, PositiveInt, Range


@dataclass
class InstDiscParams(ImageSSLParams):
    temperature: PositiveFloat = 0.07
    num_negatives: PositiveInt = 4096  # bank entries sampled per image
    loss: Literal["nce", "softmax"] = "nce"
    bank_momentum: Annotated[float, Range(0, 1, open_high=True)] = 0.5
    proximal: NonNegativeFloat = 0.0  # lambda of the proximal regularisation (the paper: 30 on ImageNet)


class InstDiscModule(nn.Module):
    def __init__(self, backbone: Backbone, dim: int, bank_size: int, bank_momentum: float, seed: int):
        super().__init__()
        self.backbone = backbone
        self.embed = nn.Linear(backbone.dim, dim)
        self.bank = MemoryBank(bank_size, dim, bank_momentum, seed)
        self.register_buffer("log_z", torch.tensor(math.nan))  # NCE's normalising constant, set on the first step

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.backbone(images)).float(), dim=1)


@register_objective("instdisc")
class InstDisc(ImageSSL):
    Params = InstDiscParams
    num_views = 1

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        return InstDiscModule(backbone, p.projection_dim, len(self.train), p.bank_momentum, self.recipe.seed)

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        core = unwrap(module)
        index = batch["index"]
        query = module(batch["view1"])
        bank = core.bank
        positive = bank.get(index)
        negatives = bank.get(bank.sample(query.shape[0], p.num_negatives, query.device))
        logits = bank_logits(query, positive, negatives, p.temperature)
        if p.loss == "nce":
            if torch.isnan(core.log_z):
                core.log_z.fill_(float(estimate_log_z(logits[:, 1:], len(bank))))
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
