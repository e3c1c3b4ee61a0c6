"""SimCSE sentence embeddings and contrastive retrieval training (objective ``simcse``).

* ``mode: unsupervised`` - unlabeled sentences (data role ``text``); every sentence is encoded twice and
  dropout makes the two views (Gao, Yao & Chen 2021, "SimCSE: Simple Contrastive Learning of Sentence
  Embeddings"). With ``text_views`` the second view is an edit of the sentence instead (lexical edits or
  back-translation from :mod:`mmssl.data.text_views`, a function of seed, epoch and row).
* ``mode: supervised`` - pairs ``anchor``/``positive`` with optional mined hard negatives in a column
  ``negative`` or columns ``negative_1..k`` (supervised SimCSE; the multiple-negatives ranking loss of
  retrieval training).

Negatives: in-batch, from every process (``gather``, differentiable, ``label_offset = rank * B``), the
mined columns, and with ``negatives: queue`` a MoCo queue of keys from a momentum encoder (He et al. 2020).
Losses (all from :mod:`mmssl.losses`): InfoNCE (fixed or learnable temperature, duplicates of the
positive masked out of the denominator), margin contrastive (Hadsell et al. 2006), triplet (Schroff et
al. 2015). ``cached_chunk_size`` turns on GradCache (Gao et al. 2021): the batch is embedded in chunks,
so a large batch fits in the memory of a small one.

Texts are tokenised once in `setup`. Each step's sequences are packed end to end into a few rows with a
block-diagonal attention mask (``batching: packed``, :mod:`mmssl.models.packing`): one encoder pass per batch
and no work on padding. Models that cannot take that layout get length-sorted buckets padded only to their own
longest (``bucket_size``) on a CPU, one padded pass on a GPU (where many small passes cost more than padding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import datasets
import torch
from torch import nn

from mmssl.data.pairs import stream_pair_splits
from mmssl.data.stream_sources import data_sources, data_stream, first_records, wants_streaming
from mmssl.data.streaming import Skip, Transform, sample_id
from mmssl.data.pairs import Rows, eval_pairs, load_pair_splits
from mmssl.data.text_views.config import CacheConfig, ViewConfig
from mmssl.distributed import gather_no_grad, gather_with_grad, local_slice_offset
from mmssl.distributed import world_size as dist_world_size
from mmssl.data.tokenizers import build_tokenizer, load_pretrained_tokenizer
from mmssl.errors import DataError, RecipeError
from mmssl.eval.embeddings import embedding_metrics
from mmssl.losses import (
    LearnableTemperature,
    cached_contrastive_backward,
    contrastive_margin_loss,
    duplicate_mask,
    info_nce,
    mutual_information_lower_bound,
    text_ids,
    triplet_loss,
)
from mmssl.losses.hard_negatives import NegativeShaping
from mmssl.models.packing import mask_dtype_for, pack_rows, packing_error, position_offset
from mmssl.models.momentum import EmbeddingQueue, make_momentum_copy
from mmssl.models.text_encoder import (
    TextEncoder,
    build_backbone,
    freeze_unused_parameters,
    load_sentence_transformer_dir,
    pack_sequences,
    save_sentence_transformer,
)
from mmssl.objectives.base import ModelOutput, Objective
from mmssl.config import ObjectiveParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, PositiveInt, Probability, Range

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
PACK_ROW_LENGTH_CPU = 64  # measured on 2 CPU cores: attention over longer rows costs more than it saves
PACK_ROW_LENGTH_CUDA = 256  # few large rows: one large kernel per layer
PACKING_TOLERANCE = 1e-4
PACKING_PROBE_TEXTS = ["a short one", "a somewhat longer sentence to check packing with", "x", "two words"]


@dataclass
class SimCSEParams(ObjectiveParams):
    mode: Literal["unsupervised", "supervised"] = "supervised"
    max_length: Annotated[int, Range(2)] = 64
    # encoder
    pooling: Literal["cls", "mean", "last_token"] = "mean"
    normalize: bool = True
    head: Literal["none", "linear", "mlp"] = "none"
    head_dim: PositiveInt | None = None
    # loss
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
    hard_negatives: bool = True
    mask_duplicates: bool = True
    negative_shaping: NegativeShaping = field(default_factory=NegativeShaping)  # MoCHi, debiased, hardness-weighted
    queue_size: PositiveInt = 4096
    momentum: Probability = 0.999
    # speed and memory
    cached_chunk_size: PositiveInt | None = None
    # how a batch's sequences reach the encoder: packed end to end in a few rows (no padding, one pass per batch),
    # length-sorted buckets of bucket_size (one pass each), or padded to the longest (one pass); auto: packed when
    # the model gives the same embeddings packed (checked at setup), else buckets on CPU and padded on a GPU
    batching: Literal["auto", "packed", "buckets", "padded"] = "auto"
    pack_row_length: PositiveInt | None = None  # tokens per packed row; default 64 on CPU, 256 on a GPU
    bucket_size: PositiveInt | None = 32
    # evaluation
    eval_pairs: str | None = field(default=None, metadata={"input": True})  # a local path mmssl must not write over
    eval_max_pairs: PositiveInt | None = 1000
    eval_before: bool = True
    # on-the-fly positives (unsupervised mode): each example's second view is an edit of it (one of these
    # views, chosen per example and epoch) instead of a second dropout pass; see mmssl.data.text_views
    text_views: list[ViewConfig] = field(default_factory=list)
    text_views_cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        if self.text_views and self.mode != "unsupervised":
            raise ValueError("text_views make the positives of mode=unsupervised; supervised data already has "
                             "positives (make views offline with `mmssl augment`, then train on its anchor/positive "
                             "columns)")
        if self.learnable_temperature and 1.0 / self.temperature > self.max_logit_scale:
            raise ValueError(f"temperature {self.temperature} gives logit scale {1 / self.temperature:.4g} above "
                             f"max_logit_scale={self.max_logit_scale}")
        if self.negatives == "queue" and self.loss != "infonce":
            raise ValueError("negatives=queue needs loss=infonce (the queue adds InfoNCE negatives)")


class ContrastiveModule(nn.Module):
    """The trained state: encoder (+ learnable temperature) (+ momentum encoder and queue, MoCo).

    ``forward`` embeds (packed) inputs with the online encoder; the trainer's optimiser, DDP and
    checkpoints see every part (the momentum encoder is frozen, the queue is a buffer).
    """

    def __init__(self, encoder: TextEncoder, temperature: LearnableTemperature | None = None,
                 queue_size: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature
        self.key_encoder: TextEncoder | None = None
        self.queue: EmbeddingQueue | None = None
        if queue_size:
            self.key_encoder = make_momentum_copy(encoder)
            self.queue = EmbeddingQueue(encoder.embedding_dim, queue_size)

    def forward(self, **kwargs) -> torch.Tensor:
        return self.encoder(**kwargs)


@register_objective("simcse")
class SimCSE(Objective):
    """Contrastive sentence embeddings: unsupervised or supervised SimCSE, retrieval with hard negatives, MoCo queue."""

    Params = SimCSEParams
    output = ModelOutput("sentence_embedding", "sentence-transformers", "sentence-similarity",
                         "sentence_embedding.md", "sentence-similarity")

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        recipe, p = self.recipe, self.params
        self.text_views = None
        streaming = wants_streaming(recipe.data)
        if streaming:  # rows tokenised in loader workers; evaluation from data.eval_path / objective.eval_pairs
            sources = data_sources(recipe.data, "text" if p.mode == "unsupervised" else "pairs")
            head = first_records(sources, recipe.tokenizer.train_samples)
            splits, self.views = stream_pair_splits(recipe.data, p.mode, p.hard_negatives, head, recipe.seed)
        else:
            splits, self.views = load_pair_splits(recipe.data, p.mode, p.hard_negatives, recipe.seed)
        if p.mode == "unsupervised" and p.text_views:
            from mmssl.data.text_views import TextViews

            self.text_views = TextViews(p.text_views, seed=recipe.seed, cache=p.text_views_cache)
        self.negative_columns = self.views[2:]
        self._check_negatives(self.context.world_size)

        self.tokenizer = self._tokenizer(self.context.resume_dir, splits.train)
        backbone = self.shared_part("text_backbone", lambda: build_backbone(recipe.model, self.tokenizer))
        limit = getattr(backbone.config, "max_position_embeddings", None)
        if isinstance(limit, int) and p.max_length > limit:
            raise RecipeError(f"objective.max_length={p.max_length} exceeds the model's {limit} positions; lower "
                              "objective.max_length or enlarge the model's max_position_embeddings")
        encoder = TextEncoder(backbone, pooling=p.pooling, normalize=p.normalize, head=p.head, head_dim=p.head_dim)
        self.frozen = freeze_unused_parameters(encoder, self.tokenizer)
        self.batching = self._batching(backbone)
        temperature = LearnableTemperature(p.temperature, p.max_logit_scale) if p.learnable_temperature else None
        self.model = ContrastiveModule(encoder, temperature, p.queue_size if p.negatives == "queue" else None)
        self.module = self.model

        if streaming:
            self.num_train_rows = None
            self.train_stream = data_stream(recipe.data, sources, PairTransform(self, recipe.data.columns), recipe.seed)
        else:
            self.num_train_rows = len(splits.train)
            self.train_dataset = self._tokenize(splits.train)  # type: ignore[assignment]
        self.eval_rows = eval_pairs(recipe.data, p.eval_pairs, p.mode, splits.eval, p.eval_max_pairs)
        self.eval_dataset = datasets.Dataset.from_dict(self.eval_rows) if self.eval_rows else None
        self.before: dict[str, float] = {}
        if p.eval_before and self.eval_rows:
            self.before = self._metrics(self.model.encoder)

    def _batching(self, backbone: nn.Module) -> str:
        """The batch layout this run uses (`SimCSEParams.batching`), packing only where the probe agrees."""
        p, on_cuda = self.params, self.recipe.train.on_cuda
        self.row_length = p.pack_row_length or (PACK_ROW_LENGTH_CUDA if on_cuda else PACK_ROW_LENGTH_CPU)
        self.mask_dtype = mask_dtype_for(backbone)
        self.first_position = position_offset(backbone)
        if p.batching in ("buckets", "padded"):
            return p.batching
        sample = self._ids(PACKING_PROBE_TEXTS)
        error = packing_error(backbone, self.tokenizer.pad_token_id, sample, p.pooling)
        if error is not None and error <= PACKING_TOLERANCE:
            return "packed"
        fallback = "padded" if on_cuda else "buckets"
        impl = getattr(backbone.config, "_attn_implementation", None)
        why = (f"its attention ({impl}) does not take a block-diagonal mask" if error is None else
               f"packed embeddings differ from padded ones by {error:.2g}")
        if p.batching == "packed":
            raise RecipeError(f"objective.batching=packed: model type {backbone.config.model_type!r} cannot be packed "
                              f"({why}); use objective.batching: buckets or padded")
        log.info("batching: %s (model type %r cannot be packed: %s)", fallback, backbone.config.model_type, why)
        return fallback

    def _group(self, seqs: list[list[int]], chunk: int | None) -> dict[str, Any]:
        """`seqs` laid out for the encoder as `self.batching` says, in chunks of `chunk` sequences (GradCache)."""
        pad = self.tokenizer.pad_token_id
        if self.batching == "packed":
            step = chunk or len(seqs)
            groups = [pack_rows(seqs[s : s + step], pad, self.row_length, self.first_position, self.mask_dtype)
                      for s in range(0, len(seqs), step)]
            return {"groups": groups, "restore": None}
        size = chunk or (self.params.bucket_size if self.batching == "buckets" else None)
        return pack_sequences(seqs, pad, size or len(seqs), sort=size is not None)

    def _check_negatives(self, world: int) -> None:
        p, cfg = self.params, self.recipe.train
        cached_multi = p.cached_chunk_size is not None and p.learnable_temperature and world > 1
        if cached_multi:
            raise RecipeError("objective.cached_chunk_size with objective.learnable_temperature is not supported on "
                              "several processes; fix the temperature or turn GradCache off")
        in_batch = cfg.batch_size * (world if p.gather else 1)
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

    def _tokenizer(self, resume_dir: Path | None, train: datasets.Dataset):
        recipe = self.recipe
        saved = resume_dir / TOKENIZER_DIR if resume_dir else None

        def build():
            if saved is not None and saved.is_dir():
                return load_pretrained_tokenizer(str(saved))
            if recipe.tokenizer.path:
                return load_pretrained_tokenizer(recipe.tokenizer.path, recipe.tokenizer.trust_remote_code)
            if recipe.model.pretrained:
                return load_pretrained_tokenizer(recipe.model.pretrained, recipe.model.trust_remote_code,
                                                 "model.pretrained", "model.trust_remote_code")
            texts = (t for column in dict.fromkeys(self.views) for t in train[column])
            return build_tokenizer(recipe.tokenizer, "wordpiece", texts)

        tok = self.shared_part("tokenizer", build)
        if tok.pad_token_id is None:
            if tok.eos_token is None:
                raise RecipeError("the tokenizer has neither a pad nor an eos token; set tokenizer.path to one that does")
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        return tok

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.params.max_length,
                              return_attention_mask=False)["input_ids"]

    def tokenize_row(self, texts: dict[str, str], key: str) -> dict[str, Any]:
        """One streamed row (a text per view column) as `_tokenize` lays out a table's rows."""
        row: dict[str, Any] = {}
        for column in dict.fromkeys(self.views):
            row[f"{column}_ids"] = self._ids([texts[column]])[0]
            row[f"{column}_hash"] = int(text_ids([texts[column]])[0])
        if self.text_views is not None:
            row["text"], row["index"] = texts["text"], sample_id(key)
        return row

    def _tokenize(self, ds: datasets.Dataset) -> Rows:
        columns: dict[str, list] = {}
        for column in dict.fromkeys(self.views):
            texts = list(ds[column])
            columns[f"{column}_ids"] = self._ids(texts)
            columns[f"{column}_hash"] = text_ids(texts).tolist()
        if self.text_views is not None:  # views are made per step from the raw text and its row index
            columns["text"] = list(ds["text"])
            columns["index"] = list(range(len(ds)))
        return Rows(columns)

    # -- per step --------------------------------------------------------------------------------
    @property
    def _queue_mode(self) -> bool:
        return self.params.negatives == "queue"

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        p = self.params
        b = len(rows)
        seqs = [[r[f"{view}_ids"] for r in rows] for view in self.views]
        changed = None
        if self.text_views is not None:
            sources = [r["text"] for r in rows]
            edited = self.text_views(sources, [r["index"] for r in rows], self.epoch)
            seqs[1] = self._ids(edited)
            changed = sum(src != new for src, new in zip(sources, edited)) / max(1, b)
        # duplicate masking compares source texts: a view of a duplicate caption is a false negative
        hashes = torch.tensor([[r[f"{view}_hash"] for r in rows] for view in self.views], dtype=torch.long)
        batch: dict[str, Any] = {"hashes": hashes, "num_rows": b, "num_views": len(self.views)}
        if self._queue_mode:
            query, keys = seqs[0], [s for view in seqs[1:] for s in view]
            batch["packed"] = self._group(query, p.cached_chunk_size)
            batch["packed_keys"] = self._group(keys, None)
            flat = query + keys
        else:
            flat = [s for view in seqs for s in view]
            batch["packed"] = self._group(flat, p.cached_chunk_size)
        batch["tokens"] = sum(len(s) for s in flat)
        if changed is not None:
            batch["views_changed"] = torch.tensor(changed, dtype=torch.float64)
        return batch

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["num_rows"]), int(batch["tokens"])

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Uncached loss of one batch (used by `training_step`; handy in tests)."""
        core = self.core(module)
        keys = self._keys(core, batch)
        return self._loss(core, module(packed=batch["packed"]), batch, keys)

    def training_step(self, module: nn.Module, batch: dict[str, Any], backward) -> dict[str, torch.Tensor]:
        core, p = self.core(module), self.params
        keys = self._keys(core, batch)
        if p.cached_chunk_size is None:
            out = self._loss(core, module(packed=batch["packed"]), batch, keys)
            backward(out["loss"])
        else:
            out = {}
            restore = batch["packed"]["restore"]

            def encode(group: dict[str, torch.Tensor]) -> torch.Tensor:
                return module(packed={"groups": [group], "restore": None})

            def loss_fn(emb: torch.Tensor) -> torch.Tensor:
                out.update(self._loss(core, emb[restore] if restore is not None else emb, batch, keys))
                return out["loss"]

            cached_contrastive_backward(loss_fn, [(encode, batch["packed"]["groups"])],
                                        no_sync=getattr(module, "no_sync", None), backward=backward)
        if self._queue_mode and keys is not None:
            assert core.queue is not None
            b = batch["num_rows"]
            core.queue.enqueue(gather_no_grad(keys[:b]) if p.gather else keys[:b])
        if "views_changed" in batch:
            out["views_changed"] = batch["views_changed"]
        return {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0}

    def momentum_pairs(self, core: ContrastiveModule) -> list[tuple[nn.Module, nn.Module]]:
        """MoCo: the key encoder follows the online one once per optimiser step, not per micro-batch."""
        return [(core.encoder, core.key_encoder)] if self._queue_mode and core.key_encoder is not None else []

    def _keys(self, core: ContrastiveModule, batch: dict[str, Any]) -> torch.Tensor | None:
        if not self._queue_mode:
            return None
        assert core.key_encoder is not None
        with torch.no_grad():
            return core.key_encoder(packed=batch["packed_keys"])

    def _loss(self, core: ContrastiveModule, emb: torch.Tensor, batch: dict[str, Any],
              keys: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The loss of one batch from its embeddings (view-major rows: anchors, positives, negatives...)."""
        p = self.params
        b, v = int(batch["num_rows"]), int(batch["num_views"])
        d = emb.shape[-1]
        if keys is not None:  # queue mode: emb holds the queries only; keys come from the momentum encoder
            query, rest = emb, keys.view(v - 1, b, d)
        else:
            views = emb.view(v, b, d)
            query, rest = views[0], views[1:]
        positive = rest[0]
        negatives = rest[1:].reshape(-1, d) if v > 2 else None
        hashes = batch["hashes"].to(emb.device)
        if p.loss == "triplet":
            negative = rest[1] if v > 2 else positive.roll(1, dims=0)
            loss = triplet_loss(query, positive, negative, margin=p.margin, distance=p.distance)
            return {"loss": loss}
        if p.loss == "margin":
            negative = rest[1] if v > 2 else positive.roll(1, dims=0)
            labels = torch.cat([torch.ones(b, device=emb.device), torch.zeros(b, device=emb.device)])
            loss = contrastive_margin_loss(torch.cat([query, query]), torch.cat([positive, negative]), labels,
                                           margin=p.margin, distance=p.distance)
            return {"loss": loss}

        offset = 0
        key_hash, neg_hash = hashes[1], hashes[2:].reshape(-1)
        if p.gather and dist_world_size() > 1:
            positive = gather_with_grad(positive)
            negatives = gather_with_grad(negatives) if negatives is not None else None
            key_hash, neg_hash = gather_no_grad(key_hash), gather_no_grad(neg_hash)
            offset = local_slice_offset(b)
        extra = [negatives] if negatives is not None else []
        queued = 0
        if keys is not None and core.queue is not None and len(core.queue):
            queued = len(core.queue)
            extra.append(core.queue.negatives.clone())
        extra_negatives = torch.cat(extra) if extra else None
        mask = None
        if p.mask_duplicates:
            mask = duplicate_mask(hashes[1], torch.cat([key_hash, neg_hash]), label_offset=offset)
            if queued:
                mask = torch.cat([mask, torch.zeros(b, queued, dtype=torch.bool, device=mask.device)], dim=1)
        kwargs: dict[str, Any] = {"temperature": p.temperature}
        out: dict[str, torch.Tensor] = {}
        if core.temperature is not None:
            kwargs = {"logit_scale": core.temperature()}
            out["temperature"] = 1.0 / kwargs["logit_scale"].detach()
        loss = info_nce(query, positive, extra_negatives=extra_negatives, false_negative_mask=mask,
                        label_offset=offset, shaping=p.negative_shaping, **kwargs)
        candidates = positive.shape[0] + (0 if extra_negatives is None else extra_negatives.shape[0])
        out["loss"] = loss
        out["mi_lower_bound"] = mutual_information_lower_bound(loss.detach(), candidates)
        return out

    # -- evaluation and export -------------------------------------------------------------------
    def _metrics(self, encoder: TextEncoder, tokenizer=None, max_length: int | None = None) -> dict[str, float]:
        assert self.eval_rows is not None
        tok = tokenizer or self.tokenizer
        length = max_length or self.params.max_length
        self.last_diagnostics = {}
        return embedding_metrics(
            lambda texts: encoder.encode(texts, tok, max_length=length),
            self.eval_rows["anchor"], self.eval_rows["positive"], self.eval_rows.get("negative"),
            self.eval_rows.get("score"), temperature=self.params.temperature,
            loss_batch_size=self.recipe.train.batch_size, diagnostics=self.last_diagnostics,
        )

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        """Metrics of the exported embedding (no head) on the eval pairs. Every process embeds the whole
        (small) eval set, so the result needs no gathering; the trainer's eval loader is not used."""
        if not self.eval_rows:
            return {}
        return self._metrics(self.core(module).encoder)

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        encoder, tokenizer, max_length = load_sentence_transformer_dir(directory)
        self.eval_rows = eval_pairs(self.recipe.data, self.params.eval_pairs, self.params.mode, None,
                                    self.params.eval_max_pairs)
        if not self.eval_rows:
            raise DataError("no eval pairs: set objective.eval_pairs to a file with anchor/positive columns")
        return self._metrics(encoder, tokenizer, max_length)

    def save_artifacts(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)

    def export(self, module: nn.Module, directory: Path) -> None:
        save_sentence_transformer(self.core(module).encoder, directory, self.tokenizer, self.params.max_length)

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "num_parameters": sum(q.numel() for q in self.model.encoder.parameters()),
            "architecture": type(self.model.encoder.model).__name__,
            "mode": p.mode,
            "views": self.views,
            "hard_negative_columns": self.negative_columns,
            "train_rows": self.num_train_rows if self.num_train_rows is not None else "streamed",
            "negatives": p.negatives,
            "loss": p.loss,
            "cached": p.cached_chunk_size is not None,
            "frozen_unused_parameters": self.frozen,
            "eval_before": self.before,
            **({"text_views": self.text_views.describe()} if self.text_views is not None else {}),
        }


class PairTransform(Transform):
    """A streamed record -> the tokenised row SimCSE's `collate` takes (in loader workers); a record with an
    empty or missing text in one of its view columns is skipped and counted."""

    def __init__(self, objective: SimCSE, mapping: dict[str, str]):
        self.objective, self.mapping = objective, mapping

    def __call__(self, record: dict[str, Any]) -> list[Any]:
        texts = {}
        for column in dict.fromkeys(self.objective.views):
            text = record.get(self.mapping.get(column, column))
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            if not isinstance(text, str) or not text.strip():
                raise Skip(f"empty or missing {column!r}")
            texts[column] = text
        return [self.objective.tokenize_row(texts, str(record.get("__key__", "")))]
