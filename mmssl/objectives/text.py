"""The base of sentence-embedding methods (`TextObjective`): everything but the loss.

It owns the data (``mode: unsupervised``: sentences, data role ``text``, the second view a dropout pass or an
edit from ``text_views``; ``mode: supervised``: ``anchor``/``positive`` pairs with optional mined negatives in
``negative`` or ``negative_1..k``; read whole or streamed), the tokenizer (the resumed run's, ``tokenizer.path``,
``model.pretrained``'s, or a WordPiece trained on the data), the encoder (`TextEncoder`: pooling, head,
normalisation), the batch layout (packed rows, buckets or padding, `mmssl.models.batch_layout`; GradCache
chunks with ``cached_chunk_size``), evaluation (STS and retrieval on eval pairs) and export (a
sentence-transformers folder).

A text method is a subclass that implements `loss` (and declares its `Params` if it has any); register it in a
new module of `mmssl/objectives/`::

    @dataclass
    class AlignParams(TextEmbeddingParams):
        weight: float = 1.0

    @register_objective("align")
    class Align(TextObjective):
        Params = AlignParams

        def loss(self, core, embeddings, batch):
            anchor, others = self.split_views(embeddings, batch)  # [B, D], [V-1, B, D]
            return {"loss": self.params.weight * (anchor - others[0]).pow(2).sum(-1).mean()}

Optional hooks: `build_module` (a `TextEmbeddingModule` with what the loss learns or keeps), `validate` (refuse
settings the loss cannot train with), `momentum_keys` (views after the first embedded by a momentum
``key_encoder``: `build_module` then makes it with `make_momentum_copy`, the base moves it towards the encoder
after each optimiser step, and `Params` has a ``momentum`` rate), `after_step`, `eval_temperature`. `mmssl.objectives.simcse` is the full example.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import datasets
import torch
from torch import nn

from mmssl.config import ObjectiveParams
from mmssl.data.pairs import Rows, eval_pairs, load_pair_splits, stream_pair_splits
from mmssl.data.records import record_text
from mmssl.data.stream_sources import data_sources, data_stream, first_records, wants_streaming
from mmssl.data.streaming import Skip, Transform, sample_id
from mmssl.data.text_views.config import CacheConfig, ViewConfig
from mmssl.data.tokenizers import build_tokenizer, load_pretrained_tokenizer
from mmssl.errors import DataError, RecipeError
from mmssl.eval.embeddings import embedding_metrics
from mmssl.losses import cached_contrastive_backward, text_ids
from mmssl.models.batch_layout import PACKING_PROBE_TEXTS, BatchLayout, choose_layout
from mmssl.models.text_encoder import (
    TextEncoder,
    build_backbone,
    freeze_unused_parameters,
    load_sentence_transformer_dir,
    save_sentence_transformer,
)
from mmssl.objectives.base import ModelOutput, Objective
from mmssl.schema import PositiveInt, Range

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


@dataclass
class TextEmbeddingParams(ObjectiveParams):
    mode: Literal["unsupervised", "supervised"] = "supervised"
    max_length: Annotated[int, Range(2)] = 64
    # encoder
    pooling: Literal["cls", "mean", "last_token"] = "mean"
    normalize: bool = True
    head: Literal["none", "linear", "mlp"] = "none"
    head_dim: PositiveInt | None = None
    # supervised data: also read mined negatives (columns negative or negative_1..k) when there are any
    hard_negatives: bool = True
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


class TextEmbeddingModule(nn.Module):
    """The trained state of a text method: its `encoder`; a method's subclass adds what its loss learns or keeps
    (a temperature, a momentum ``key_encoder``, a queue). ``forward`` embeds (packed) inputs with the encoder."""

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, **kwargs) -> torch.Tensor:
        return self.encoder(**kwargs)


class TextObjective(Objective):
    """Sentence embeddings trained by a loss over the embeddings of each row's views; subclasses implement `loss`."""

    Params = TextEmbeddingParams
    output = ModelOutput("sentence_embedding", "sentence-transformers", "sentence-similarity",
                         "sentence_embedding.md", "sentence-similarity")

    # -- what a method implements ------------------------------------------------------------------
    def loss(self, core: TextEmbeddingModule, embeddings: torch.Tensor,
             batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, ...}`` (other scalars are logged) from one batch's `embeddings`: view-major
        [V*B, D] (B anchors, B positives, then each negative column), or the anchors only [B, D] when
        `momentum_keys` (the other views are then ``batch["keys"]`` [(V-1)*B, D], without gradient); `split_views`
        gives both as (anchors [B, D], other views [V-1, B, D]). `batch` also holds ``num_rows`` (B),
        ``num_views`` (V) and ``hashes`` [V, B], ids of the texts (equal ids: equal texts, false negatives)."""
        raise NotImplementedError

    def build_module(self, encoder: TextEncoder) -> TextEmbeddingModule:
        """The module trained: the encoder, plus what the loss learns or keeps."""
        return TextEmbeddingModule(encoder)

    def validate(self) -> None:
        """Raise `RecipeError` for settings the loss cannot train with (called once the views are known,
        before the model is built)."""

    @property
    def momentum_keys(self) -> bool:
        """Whether the views after the first are embedded by the module's momentum ``key_encoder`` (a
        `make_momentum_copy` of the encoder, moved after each optimiser step), apart from the trained pass."""
        return False

    def after_step(self, core: TextEmbeddingModule, batch: dict[str, Any]) -> None:
        """Called after each micro-batch's backward (e.g. to enqueue ``batch["keys"]``)."""

    @property
    def eval_temperature(self) -> float | None:
        """The temperature of the InfoNCE loss evaluation reports (None: no loss among the eval metrics)."""
        return None

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
        self.validate()

        self.tokenizer = self._tokenizer(self.context.resume_dir, splits.train)
        backbone = self.shared_part("text_backbone", lambda: build_backbone(recipe.model, self.tokenizer))
        limit = getattr(backbone.config, "max_position_embeddings", None)
        if isinstance(limit, int) and p.max_length > limit:
            raise RecipeError(f"objective.max_length={p.max_length} exceeds the model's {limit} positions; lower "
                              "objective.max_length or enlarge the model's max_position_embeddings")
        encoder = TextEncoder(backbone, pooling=p.pooling, normalize=p.normalize, head=p.head, head_dim=p.head_dim)
        self.frozen = freeze_unused_parameters(encoder, self.tokenizer)
        self.layout = self._layout(backbone)
        self.model = self.build_module(encoder)
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

    def _layout(self, backbone: nn.Module) -> BatchLayout:
        """The batch layout this run uses (``objective.batching``), packing only where the probe agrees."""
        p = self.params
        layout, refused = choose_layout(backbone, self.tokenizer.pad_token_id, self._ids(PACKING_PROBE_TEXTS),
                                        requested=p.batching, pooling=p.pooling, on_cuda=self.recipe.train.on_cuda,
                                        row_length=p.pack_row_length, bucket_size=p.bucket_size)
        if refused is not None:
            if p.batching == "packed":
                raise RecipeError(f"objective.batching=packed: model type {backbone.config.model_type!r} cannot be "
                                  f"packed ({refused}); use objective.batching: buckets or padded")
            log.info("batching: %s (model type %r cannot be packed: %s)", layout.kind, backbone.config.model_type,
                     refused)
        return layout

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
                raise RecipeError("the tokenizer has neither a pad nor an eos token; set tokenizer.path to one that "
                                  "does")
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
        if self.momentum_keys:
            query, keys = seqs[0], [s for view in seqs[1:] for s in view]
            batch["packed"] = self.layout.group(query, p.cached_chunk_size)
            batch["packed_keys"] = self.layout.group(keys)
            flat = query + keys
        else:
            flat = [s for view in seqs for s in view]
            batch["packed"] = self.layout.group(flat, p.cached_chunk_size)
        batch["tokens"] = sum(len(s) for s in flat)
        if changed is not None:
            batch["views_changed"] = torch.tensor(changed, dtype=torch.float64)
        return batch

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["num_rows"]), int(batch["tokens"])

    def split_views(self, embeddings: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchors [B, D], the other views [V-1, B, D]) of a batch's embeddings (see `loss`)."""
        b, v, d = int(batch["num_rows"]), int(batch["num_views"]), embeddings.shape[-1]
        if "keys" in batch:
            return embeddings, batch["keys"].view(v - 1, b, d)
        views = embeddings.view(v, b, d)
        return views[0], views[1:]

    def _with_keys(self, core: TextEmbeddingModule, batch: dict[str, Any]) -> dict[str, Any]:
        if not self.momentum_keys:
            return batch
        with torch.no_grad():
            return {**batch, "keys": core.key_encoder(packed=batch["packed_keys"])}

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Uncached loss of one batch (handy in tests)."""
        core = self.core(module)
        batch = self._with_keys(core, batch)
        return self.loss(core, module(packed=batch["packed"]), batch)

    def training_step(self, module: nn.Module, batch: dict[str, Any], backward) -> dict[str, torch.Tensor]:
        """One pass over the batch's layout and the loss; with ``cached_chunk_size``, GradCache (Gao et al. 2021):
        the batch is embedded in chunks, so a large batch fits in the memory of a small one."""
        core = self.core(module)
        batch = self._with_keys(core, batch)
        if self.params.cached_chunk_size is None:
            out = self.loss(core, module(packed=batch["packed"]), batch)
            backward(out["loss"])
        else:
            out = {}
            restore = batch["packed"]["restore"]

            def encode(group: dict[str, torch.Tensor]) -> torch.Tensor:
                return module(packed={"groups": [group], "restore": None})

            def loss_fn(emb: torch.Tensor) -> torch.Tensor:
                out.update(self.loss(core, emb[restore] if restore is not None else emb, batch))
                return out["loss"]

            cached_contrastive_backward(loss_fn, [(encode, batch["packed"]["groups"])],
                                        no_sync=getattr(module, "no_sync", None), backward=backward)
        self.after_step(core, batch)
        if "views_changed" in batch:
            out["views_changed"] = batch["views_changed"]
        return {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0}

    def momentum_pairs(self, core: TextEmbeddingModule) -> list[tuple[nn.Module, nn.Module]]:
        """The key encoder follows the online one once per optimiser step, not per micro-batch."""
        key_encoder = getattr(core, "key_encoder", None)
        return [(core.encoder, key_encoder)] if self.momentum_keys and key_encoder is not None else []

    # -- evaluation and export -------------------------------------------------------------------
    def _metrics(self, encoder: TextEncoder, tokenizer=None, max_length: int | None = None) -> dict[str, float]:
        assert self.eval_rows is not None
        tok = tokenizer or self.tokenizer
        length = max_length or self.params.max_length
        self.last_diagnostics = {}
        return embedding_metrics(
            lambda texts: encoder.encode(texts, tok, max_length=length),
            self.eval_rows["anchor"], self.eval_rows["positive"], self.eval_rows.get("negative"),
            self.eval_rows.get("score"), temperature=self.eval_temperature,
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
            "cached": p.cached_chunk_size is not None,
            "frozen_unused_parameters": self.frozen,
            "eval_before": self.before,
            **({"text_views": self.text_views.describe()} if self.text_views is not None else {}),
        }


class PairTransform(Transform):
    """A streamed record -> the tokenised row `TextObjective.collate` takes (in loader workers); a record with
    an empty or missing text in one of its view columns is skipped and counted."""

    def __init__(self, objective: TextObjective, mapping: dict[str, str]):
        self.objective, self.mapping = objective, mapping

    def __call__(self, record: dict[str, Any]) -> list[Any]:
        texts = {}
        for column in dict.fromkeys(self.objective.views):
            text = record_text(record, self.mapping.get(column, column))
            if text is None or not text.strip():
                raise Skip(f"empty or missing {column!r}")
            texts[column] = text
        return [self.objective.tokenize_row(texts, str(record.get("__key__", "")))]
