"""The optimiser of a run: AdamW (default; torch's fused kernel where it applies), SGD with momentum, or LARS
(timm's implementation), over the parameter groups the objective asks for."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmssl.config import TrainConfig
from mmssl.errors import RecipeError


def resolve_groups(groups: list[dict[str, Any]], cfg: TrainConfig) -> list[dict[str, Any]]:
    """Objective groups (``weight_decay``/``lr_scale`` as multipliers) -> optimiser groups with absolute
    ``lr`` and ``weight_decay``; empty groups dropped; every parameter in at most one group."""
    seen: set[int] = set()
    out = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        if any(id(p) in seen for p in params):
            raise ValueError("a parameter is in two optimiser groups")
        seen.update(id(p) for p in params)
        if params:
            out.append({"params": params, "lr": cfg.learning_rate * float(group.get("lr_scale", 1.0)),
                        "weight_decay": cfg.weight_decay * float(group.get("weight_decay", 1.0))})
    if not out:
        raise RecipeError("the model has no trainable parameters")
    return out


def build_optimizer(module: nn.Module, groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = resolve_groups(groups, cfg)
    params = [p for g in groups for p in g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "lars":
        from timm.optim import Lars

        if not any(g["weight_decay"] for g in groups):
            raise RecipeError("train.optimizer=lars adapts only parameter groups with weight decay, and "
                              "train.weight_decay is 0: set train.weight_decay (e.g. 1.0e-6), or use optimizer sgd")
        return Lars(groups, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov,
                    trust_coeff=cfg.lars_trust_coefficient)
    # the fused kernel (one pass per parameter; 5-7x faster than the foreach one on this CPU for 12-23M
    # parameters) where torch has it, as the transformers Trainer uses by default
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                             **({"fused": True} if fused else {}))
