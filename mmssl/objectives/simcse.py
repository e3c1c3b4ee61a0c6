"""SimCSE sentence embeddings and contrastive retrieval training (objective ``simcse``).

Data, tokenizer, encoder, batching, evaluation and export are `mmssl.objectives.text.TextObjective`'s:
``mode: unsupervised`` encodes every sentence twice, dropout making the two views (Gao, Yao & Chen 2021,
"SimCSE: Simple Contrastive Learning of Sentence Embeddings"), or edits it with ``text_views``; ``mode:
supervised`` trains on anchor/positive pairs with optional mined negatives (supervised SimCSE; the
multiple-negatives ranking loss of retrieval training). ``supcon: true`` (supervised pairs with a class label per
pair, ``label_column``) makes every in-batch positive whose pair has the anchor's label a further positive
(SupCon's L_out, Khosla et al. 2020, `mmssl.losses.supcon`), with labels on ``label_fraction`` of the pairs
(`mmssl.data.label_fraction.labelled_rows`; the other pairs keep their own positive only).

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
from mmssl.data.label_fraction import labelled_rows
from mmssl.data.stream_sources import wants_streaming
from mmssl.errors import DataError, RecipeError
from mmssl.losses import (
    LearnableTemperature,
    contrastive_margin_loss,
    duplicate_mask,
    info_nce,
    mutual_information_lower_bound,
    triplet_loss,
)
from mmssl.data.pairs import Rows
from mmssl.losses.hard_negatives import NegativeShaping
from mmssl.losses.supcon import same_label_mask
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
    # SupCon for supervised pairs: in-batch pairs with the anchor's label are positives too
    supcon: bool = False
    label_column: str = "label"  # the class of each pair (any value; null or blank: unlabelled)
    label_fraction: Annotated[float, Range(0, 1, open_low=True)] = 1.0  # share of the labelled pairs kept

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.supcon and (self.mode != "supervised" or self.loss != "infonce"):
            raise ValueError("supcon needs mode=supervised (pairs with a label column) and loss=infonce")
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

    def setup(self) -> None:
        self.pair_labels: list[int] | None = None
        if self.params.supcon:
            if wants_streaming(self.recipe.data):
                raise RecipeError("objective.supcon needs each pair's class label, which streamed pairs do not carry; "
                                  "set data.streaming=false to read the data whole")
            self.pair_labels, self.label_names, self.label_anchors = train_pair_labels(
                self.recipe, self.params.label_column, self.params.label_fraction)
        super().setup()

    def _tokenize(self, ds) -> Rows:  # noqa: ANN001 - a datasets.Dataset, as TextObjective._tokenize
        rows = super()._tokenize(ds)
        if self.pair_labels is not None:
            if list(ds["anchor"]) != self.label_anchors:  # the labels were read beside the same train split
                raise DataError("objective.supcon: the label column could not be aligned with the training pairs")
            rows.columns["label"] = self.pair_labels
        return rows

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().collate(rows)
        if getattr(self, "pair_labels", None) is not None:
            batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        return batch

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
        positives = None
        if "labels" in batch:  # SupCon: every in-batch positive of a pair with the anchor's label
            labels = batch["labels"].to(query.device)
            columns = gather_no_grad(labels) if positive.shape[0] != b else labels  # gathered like the positives
            positives = same_label_mask(labels, columns, offset)
            extra_columns = 0 if extra_negatives is None else extra_negatives.shape[0]
            positives = torch.cat([positives, positives.new_zeros(b, extra_columns)], dim=1)
        kwargs: dict[str, Any] = {"temperature": p.temperature}
        out: dict[str, Tensor] = {}
        if core.temperature is not None:
            kwargs = {"logit_scale": core.temperature()}
            out["temperature"] = 1.0 / kwargs["logit_scale"].detach()
        loss = info_nce(query, positive, extra_negatives=extra_negatives, false_negative_mask=mask,
                        positive_mask=positives, label_offset=offset, shaping=p.negative_shaping, **kwargs)
        candidates = positive.shape[0] + (0 if extra_negatives is None else extra_negatives.shape[0])
        out["loss"] = loss
        out["mi_lower_bound"] = mutual_information_lower_bound(loss.detach(), candidates)
        return out

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "negatives": self.params.negatives, "loss": self.params.loss}
        if getattr(self, "pair_labels", None) is not None:
            out.update(supcon=True, label_fraction=self.params.label_fraction, label_classes=len(self.label_names),
                       labelled_train_pairs=sum(1 for x in self.pair_labels if x >= 0))
        return out


def train_pair_labels(recipe, column: str, fraction: float) -> tuple[list[int], list[str], list[str]]:  # noqa: ANN001
    """The class index of every training pair (-1: unlabelled, or not among the kept `fraction`), the class
    names, and the anchors they belong to: the train split read as `mmssl.data.sources.load_splits` reads it
    (same rows, same order, same eval split), with the label column it drops."""
    import datasets

    from mmssl.data.sources import load_files, load_hub
    from mmssl.data.world import world_columns

    cfg = recipe.data
    if cfg.source == "world":
        train = datasets.Dataset.from_dict(world_columns(cfg.world, "pairs", "train"))
        where = "built-in world"
    else:
        train = load_files(cfg.path, cfg.format) if cfg.source == "files" else load_hub(cfg.path, cfg.split)
        where = f"data.path {cfg.path!r}"
    if cfg.max_examples is not None:
        train = train.select(range(min(cfg.max_examples, len(train))))
    if not cfg.eval_path and cfg.source != "world" and cfg.eval_fraction > 0 and len(train) >= 20:
        train = train.train_test_split(test_size=cfg.eval_fraction, seed=recipe.seed, shuffle=True)["train"]
    if column not in train.column_names:
        raise DataError(f"{where}: objective.supcon needs a class label per pair, but column {column!r} is not in "
                        f"the data (columns: {train.column_names}); add it or set objective.label_column")
    values = [None if v is None or not str(v).strip() else str(v).strip() for v in train[column]]
    names = sorted({v for v in values if v is not None})
    index = {name: i for i, name in enumerate(names)}
    labels = torch.tensor([-1 if v is None else index[v] for v in values], dtype=torch.long)
    keep = labelled_rows(labels, fraction, recipe.seed, names)
    used = torch.where(keep, labels, torch.full_like(labels, -1)).tolist()
    anchor = cfg.columns.get("anchor", "anchor")
    anchors = ["" if a is None else a for a in train[anchor]] if anchor in train.column_names else []
    return used, names, anchors
