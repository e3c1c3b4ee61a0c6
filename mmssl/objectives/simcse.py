"""SimCSE sentence embeddings and contrastive retrieval training (objective ``simcse``).

Data, tokenizer, encoder, batching, evaluation and export are `mmssl.objectives.text.TextObjective`'s:
``mode: unsupervised`` encodes every sentence twice, dropout making the two views (Gao, Yao & Chen 2021,
"SimCSE: Simple Contrastive Learning of Sentence Embeddings"), or edits it with ``text_views``; ``mode:
supervised`` trains on anchor/positive pairs with optional mined negatives (supervised SimCSE; the
multiple-negatives ranking loss of retrieval training).

This module is the loss. Negatives: in-batch, from every process (``gather``, differentiable, ``label_offset =
rank * B``), the mined columns, and with ``negatives: queue`` a MoCo queue of keys from a momentum encoder (He et
al. 2020). Losses (all from :mod:`mmssl.losses`): InfoNCE (fixed or learnable temperature, duplicates of the
positive masked out of the denominator), margin contrastive (Hadsell et al. 2006), triplet (Schroff et al. 2015).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from torch import Tensor

from mmssl.distributed import gather_no_grad, gather_with_grad, local_slice_offset
from mmssl.distributed import world_size as dist_world_size
from mmssl.errors import RecipeError
from mmssl.losses import (
    LearnableTemperature,
    contrastive_margin_loss,
    duplicate_mask,
    info_nce,
    mutual_information_lower_bound,
    triplet_loss,
)
from mmssl.losses.hard_negatives import NegativeShaping
from mmssl.models.momentum import EmbeddingQueue, make_momentum_copy
from mmssl.models.text_encoder import TextEncoder
from mmssl.objectives.text import TextEmbeddingModule, TextEmbeddingParams, TextObjective
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, PositiveInt, Probability, Range


@dataclass
class SimCSEParams(TextEmbeddingParams):
    loss: Literal["infonce", "margin", "triplet"] = "infonce"
    temperature: Annotated[float, Range(0, open_low=True, hint="typical values are 0.02-0.1 (sentence-transformers' "
                                                               "scale 20 is temperature 0.05)")] = 0.05
    learnable_temperature: bool = False
    max_logit_scale: Annotated[float, Range(1, open_low=True)] = 100.0
    margin: NonNegativeFloat = 0.5
    distance: Literal["cosine", "euclidean", "squared_euclidean"] = "cosine"
    # negatives
    negatives: Literal["in_batch", "queue"] = "in_batch"
    gather: bool = True
    mask_duplicates: bool = True
    negative_shaping: NegativeShaping = field(default_factory=NegativeShaping)  # MoCHi, debiased, hardness-weighted
    queue_size: PositiveInt = 4096
    momentum: Probability = 0.999

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.learnable_temperature and 1.0 / self.temperature > self.max_logit_scale:
            raise ValueError(f"temperature {self.temperature} gives logit scale {1 / self.temperature:.4g} above "
                             f"max_logit_scale={self.max_logit_scale}")
        if self.negatives == "queue" and self.loss != "infonce":
            raise ValueError("negatives=queue needs loss=infonce (the queue adds InfoNCE negatives)")


class ContrastiveModule(TextEmbeddingModule):
    """The encoder (+ learnable temperature) (+ momentum encoder and queue, MoCo): the momentum encoder is
    frozen, the queue is a buffer, so the trainer's optimiser, DDP and checkpoints see every part."""

    def __init__(self, encoder: TextEncoder, temperature: LearnableTemperature | None = None,
                 queue_size: int | None = None) -> None:
        super().__init__(encoder)
        self.temperature = temperature
        self.key_encoder: TextEncoder | None = None
        self.queue: EmbeddingQueue | None = None
        if queue_size:
            self.key_encoder = make_momentum_copy(encoder)
            self.queue = EmbeddingQueue(encoder.embedding_dim, queue_size)


@register_objective("simcse")
class SimCSE(TextObjective):
    """Contrastive sentence embeddings: unsupervised or supervised SimCSE, retrieval with hard negatives, MoCo queue."""

    Params = SimCSEParams

    def build_module(self, encoder: TextEncoder) -> ContrastiveModule:
        p = self.params
        temperature = LearnableTemperature(p.temperature, p.max_logit_scale) if p.learnable_temperature else None
        return ContrastiveModule(encoder, temperature, p.queue_size if p.negatives == "queue" else None)

    def validate(self) -> None:
        p, cfg, world_size = self.params, self.recipe.train, self.context.world_size
        if p.cached_chunk_size is not None and p.learnable_temperature and world_size > 1:
            raise RecipeError("objective.cached_chunk_size with objective.learnable_temperature is not supported on "
                              "several processes; fix the temperature or turn GradCache off")
        in_batch = cfg.batch_size * (world_size if p.gather else 1)
        if in_batch >= 2:
            return
        if p.loss in ("margin", "triplet") and self.negative_columns:
            return
        if p.loss == "infonce" and (self.negative_columns or p.negatives == "queue"):
            return
        raise RecipeError(
            f"train.batch_size={cfg.batch_size} gives each query no negatives: in-batch negatives need batch_size "
            ">= 2 (or several processes with objective.gather=true); otherwise add hard-negative columns "
            "(negative or negative_1..k) or use objective.negatives=queue"
        )

    @property
    def momentum_keys(self) -> bool:
        return self.params.negatives == "queue"

    @property
    def eval_temperature(self) -> float:
        return self.params.temperature

    def after_step(self, core: ContrastiveModule, batch: dict[str, Any]) -> None:
        """MoCo: this batch's positive keys join the queue (from every process with ``gather``)."""
        if "keys" in batch and core.queue is not None:
            keys = batch["keys"][: batch["num_rows"]]
            core.queue.enqueue(gather_no_grad(keys) if self.params.gather else keys)

    def loss(self, core: ContrastiveModule, embeddings: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        query, rest = self.split_views(embeddings, batch)
        if self.params.loss == "infonce":
            return self._info_nce(core, query, rest, batch)
        p = self.params
        positive = rest[0]
        negative = rest[1] if len(rest) > 1 else positive.roll(1, dims=0)  # mined, or another row's positive
        if p.loss == "triplet":
            return {"loss": triplet_loss(query, positive, negative, margin=p.margin, distance=p.distance)}
        b = query.shape[0]
        labels = torch.cat([torch.ones(b, device=query.device), torch.zeros(b, device=query.device)])
        return {"loss": contrastive_margin_loss(torch.cat([query, query]), torch.cat([positive, negative]), labels,
                                                margin=p.margin, distance=p.distance)}

    def _info_nce(self, core: ContrastiveModule, query: Tensor, rest: Tensor,
                  batch: dict[str, Any]) -> dict[str, Tensor]:
        """InfoNCE against every process's positives (``gather``), the mined negatives and the queue."""
        p, b, d = self.params, query.shape[0], query.shape[-1]
        positive = rest[0]
        negatives = rest[1:].reshape(-1, d) if len(rest) > 1 else None
        hashes = batch["hashes"].to(query.device)
        offset = 0
        key_hash, neg_hash = hashes[1], hashes[2:].reshape(-1)
        if p.gather and dist_world_size() > 1:
            positive = gather_with_grad(positive)
            negatives = gather_with_grad(negatives) if negatives is not None else None
            key_hash, neg_hash = gather_no_grad(key_hash), gather_no_grad(neg_hash)
            offset = local_slice_offset(b)
        extra = [negatives] if negatives is not None else []
        queued = 0
        if "keys" in batch and core.queue is not None and len(core.queue):
            queued = len(core.queue)
            extra.append(core.queue.negatives.clone())
        extra_negatives = torch.cat(extra) if extra else None
        mask = None
        if p.mask_duplicates:
            mask = duplicate_mask(hashes[1], torch.cat([key_hash, neg_hash]), label_offset=offset)
            if queued:
                mask = torch.cat([mask, torch.zeros(b, queued, dtype=torch.bool, device=mask.device)], dim=1)
        kwargs: dict[str, Any] = {"temperature": p.temperature}
        out: dict[str, Tensor] = {}
        if core.temperature is not None:
            kwargs = {"logit_scale": core.temperature()}
            out["temperature"] = 1.0 / kwargs["logit_scale"].detach()
        loss = info_nce(query, positive, extra_negatives=extra_negatives, false_negative_mask=mask,
                        label_offset=offset, shaping=p.negative_shaping, **kwargs)
        candidates = positive.shape[0] + (0 if extra_negatives is None else extra_negatives.shape[0])
        out["loss"] = loss
        out["mi_lower_bound"] = mutual_information_lower_bound(loss.detach(), candidates)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "negatives": self.params.negatives, "loss": self.params.loss}
