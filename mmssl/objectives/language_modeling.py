"""BERT-style masked LM and GPT-style causal LM on a text corpus."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import nn

from mmssl.data.sources import eval_splits, load_splits
from mmssl.data.stream_sources import PackTransform, data_sources, data_stream, first_records, wants_streaming
from mmssl.data.text_blocks import TextBlocks, collate_blocks, pack, truncate
from mmssl.data.text_views.config import ViewConfig
from mmssl.data.tokenizers import build_tokenizer, load_pretrained_tokenizer
from mmssl.errors import DataError, RecipeError
from mmssl.models.lm import (
    CausalLMModule,
    LMKind,
    MaskedLMModule,
    OutputLoss,
    build_language_model,
    max_positions,
    resolve_output_loss,
)
from mmssl.objectives.base import ModelOutput, Objective
from mmssl.config import ObjectiveParams
from mmssl.registry import register_objective
from mmssl.schema import Probability, Range

TOKENIZER_DIR = "tokenizer"


@dataclass
class LanguageModelParams(ObjectiveParams):
    max_length: Annotated[int, Range(2)] = 128
    packing: bool = True
    # extra training text: each training text's view (e.g. [{type: counterfactual}]) is added beside it where the
    # view changes it (two-sided counterfactual data augmentation); the eval split is left as it is
    text_views: list[ViewConfig] = field(default_factory=list)


@dataclass
class MaskedLMParams(LanguageModelParams):
    mask_probability: Annotated[float, Range(0, 1, open_low=True, open_high=True)] = 0.15
    mask_token_fraction: Probability = 0.8
    random_token_fraction: Probability = 0.1
    whole_word_masking: bool = False

    def __post_init__(self) -> None:
        if self.mask_token_fraction + self.random_token_fraction > 1.0:
            raise ValueError("mask_token_fraction + random_token_fraction must be <= 1")


class LanguageModeling(Objective):
    """Shared by masked and causal LM: corpus -> tokenizer -> packed blocks -> model."""

    kind: LMKind
    tokenizer_kind: str
    throughput_unit = "tokens"

    def setup(self) -> None:
        recipe, resume_dir = self.recipe, self.context.resume_dir
        streaming = wants_streaming(recipe.data)
        if streaming and self.params.text_views:
            raise RecipeError("objective.text_views adds each text's views to the training data, which a streamed run "
                              "never holds; set data.streaming=false or remove objective.text_views")
        if streaming:  # train on a stream; evaluate on data.eval_path, read whole
            sources = data_sources(recipe.data, "text")
            column = recipe.data.columns.get("text", "text")
            splits = eval_splits(recipe.data, "text", ["text"], recipe.seed)

            def corpus():  # a bounded sample of the stream trains the tokenizer
                records = first_records(sources, recipe.tokenizer.train_samples)
                return [r[column] for r in records if isinstance(r.get(column), str)]
        else:
            splits = load_splits(recipe.data, "text", ["text"], seed=recipe.seed)
            corpus = lambda: splits.train["text"]  # noqa: E731
        saved = resume_dir / TOKENIZER_DIR if resume_dir else None
        if saved is not None and saved.is_dir():
            build = lambda: load_pretrained_tokenizer(str(saved))  # noqa: E731
        else:
            build = lambda: build_tokenizer(recipe.tokenizer, self.tokenizer_kind, corpus())  # noqa: E731
        self.tokenizer = self.shared_part("tokenizer", build)
        self._check_tokenizer()
        self.model = build_language_model(recipe.model, self.kind, self.tokenizer)
        share_base_model(self.model, self.shared_part("text_backbone", lambda: self.model.base_model))
        limit = max_positions(self.model)
        if limit is not None and self.params.max_length > limit:
            raise RecipeError(
                f"objective.max_length={self.params.max_length} exceeds the model's {limit} positions; "
                f"lower objective.max_length or enlarge the model's max_position_embeddings"
            )
        self.blocks = None
        if streaming:
            transform = PackTransform(self.tokenizer, self.params.max_length, add_special_tokens=self.kind == "mlm",
                                      append_eos=self.kind == "clm", column=column, packing=self.params.packing)
            self.train_stream = data_stream(recipe.data, sources, transform, recipe.seed)
        else:
            train = with_text_views(splits.train, self.params.text_views, recipe.seed)
            self.blocks = self._blocks(train, "the training data")
            self.train_dataset = self.blocks.dataset
        self.eval_dataset = None
        if splits.eval is not None and len(splits.eval):
            self.eval_dataset = self._blocks(splits.eval, "the eval split (data.eval_path or data.eval_fraction)").dataset
        self.module = self._wrap(self.model)

    def _blocks(self, ds, what: str) -> TextBlocks:
        special = self.kind == "mlm"
        eos = self.kind == "clm"
        ds = ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)  # nulls, blanks
        if self.params.packing:
            return pack(ds, self.tokenizer, self.params.max_length, add_special_tokens=special, append_eos=eos,
                        what=what)
        return truncate(ds, self.tokenizer, self.params.max_length, add_special_tokens=special, append_eos=eos)

    def _check_tokenizer(self) -> None:
        pass

    def _wrap(self, model) -> nn.Module:
        raise NotImplementedError

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_blocks(rows, self.tokenizer.pad_token_id or 0)

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for index, batch in enumerate(loader):
                if self.recipe.train.eval_batches is not None and index >= self.recipe.train.eval_batches:
                    break
                torch.manual_seed(10_000 + index)  # the same masks at every evaluation
                batch = self.prepare_batch(batch)
                loss = module(**batch)["loss"].double()
                count = (batch["labels"] != -100).sum()
                if self.kind == "clm":
                    count = (batch["labels"][:, 1:] != -100).sum()
                total += torch.stack([loss * count, count.double()])
        module.train()
        total = accelerator.reduce(total, reduction="sum")
        mean = (total[0] / total[1].clamp(min=1)).item()
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        from accelerate import Accelerator
        from torch.utils.data import DataLoader

        recipe = self.recipe
        recipe.tokenizer.path = str(directory)
        recipe.model.pretrained = str(directory)
        self.setup()
        if self.eval_dataset is None:
            raise DataError("no eval data: set data.eval_path, or data.eval_fraction > 0 with at least 20 examples")
        accelerator = Accelerator(cpu=recipe.train.cpu or not torch.cuda.is_available())
        loader = DataLoader(self.eval_dataset, batch_size=recipe.train.batch_size, collate_fn=self.collate)
        module, loader = accelerator.prepare(self.module, loader)
        return self.evaluate(module, loader, accelerator)

    def save_artifacts(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)

    def export(self, module: nn.Module, directory: Path) -> None:
        model = module.model
        model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)

    def describe(self) -> dict[str, Any]:
        facts = {"num_parameters": sum(p.numel() for p in self.model.parameters()), "vocab_size": len(self.tokenizer),
                 "architecture": type(self.model).__name__, "streamed": self.blocks is None}
        if self.blocks is not None:
            facts.update(train_texts=self.blocks.num_texts, train_tokens=self.blocks.num_tokens,
                         train_sequences=len(self.train_dataset), truncated_texts=self.blocks.num_truncated)
        return facts


def with_text_views(ds, views: list[ViewConfig], seed: int):
    """`ds` (column ``text``) and, as extra rows, each text's view where a view changes it (seeded per row)."""
    if not views:
        return ds
    import datasets

    from mmssl.data.text_views import TextViews

    texts = [t if isinstance(t, str) else "" for t in ds["text"]]
    made = TextViews(views, seed=seed)(texts, list(range(len(texts))))
    extra = [new for old, new in zip(texts, made) if old.strip() and new != old]
    if not extra:
        return ds
    return datasets.concatenate_datasets([ds.select_columns(["text"]), datasets.Dataset.from_dict({"text": extra})])


def share_base_model(model, backbone: nn.Module) -> None:
    """Make `backbone` (an encoder another objective of the recipe trains) the base model of the LM `model`,
    with the output embeddings tied to its input embeddings again where the model ties them."""
    if backbone is model.base_model:
        return
    if type(backbone).__name__ != type(model.base_model).__name__:
        raise RecipeError(f"the shared encoder is a {type(backbone).__name__}, but this language model's base is a "
                          f"{type(model.base_model).__name__}; combine objectives over the same model.arch")
    setattr(model, model.base_model_prefix, backbone)
    if getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        model.get_output_embeddings().weight = backbone.get_input_embeddings().weight


def _lookup(size: int, ids: list[int]) -> torch.Tensor:
    table = torch.zeros(size, dtype=torch.bool)
    table[[i for i in ids if i is not None and i < size]] = True
    return table


@register_objective("mlm")
class MaskedLM(LanguageModeling):
    """BERT-style masked LM: dynamic masking (15%, 80/10/10 by default), optional whole-word masking.

    Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding".
    """

    Params = MaskedLMParams
    output = ModelOutput("mlm", "transformers", "fill-mask", "mlm.md", "fill-mask")
    kind = "mlm"
    tokenizer_kind = "wordpiece"

    def _check_tokenizer(self) -> None:
        tok = self.tokenizer
        if tok.mask_token_id is None:
            raise RecipeError(
                f"tokenizer {self.recipe.tokenizer.path!r} has no mask token, which masked LM needs; "
                "use a BERT-style tokenizer or remove tokenizer.path to train one"
            )
        vocab = tok.get_vocab()
        size = max(len(tok), max(vocab.values()) + 1)
        self.special = _lookup(size, list(tok.all_special_ids))
        # A token starts a word unless it continues one (WordPiece '##', SentencePiece without '▁',
        # byte-level BPE without 'Ġ'); used by whole-word masking.
        prefix_markers = any(t.startswith("Ġ") or t.startswith("▁") for t in vocab)
        starts = [i for t, i in vocab.items() if (t.startswith(("Ġ", "▁")) if prefix_markers else not t.startswith("##"))]
        self.word_start = _lookup(size, starts + list(tok.all_special_ids))

    def _wrap(self, model) -> nn.Module:
        return MaskedLMModule(model)

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids = batch["input_ids"]
        p = self.params
        special = self.special.to(ids.device)[ids]
        if batch.get("attention_mask") is not None:
            special |= batch["attention_mask"] == 0
        if p.whole_word_masking:
            starts = self.word_start.to(ids.device)[ids]
            starts[:, 0] = True
            word_index = starts.flatten().cumsum(0) - 1
            draws = torch.rand(int(starts.sum()), device=ids.device)
            chosen = (draws[word_index] < p.mask_probability).view_as(ids)
        else:
            chosen = torch.rand(ids.shape, device=ids.device) < p.mask_probability
        chosen &= ~special
        if not chosen.any():  # always predict at least one token
            candidates = (~special).flatten().nonzero()
            chosen.view(-1)[candidates[torch.randint(len(candidates), (1,))]] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        corrupted = ids.clone()
        r = torch.rand(ids.shape, device=ids.device)
        use_mask = chosen & (r < p.mask_token_fraction)
        use_random = chosen & (r >= p.mask_token_fraction) & (r < p.mask_token_fraction + p.random_token_fraction)
        corrupted[use_mask] = self.tokenizer.mask_token_id
        corrupted[use_random] = torch.randint(len(self.tokenizer), (int(use_random.sum()),), device=ids.device)
        return {"input_ids": corrupted, "attention_mask": batch.get("attention_mask"), "labels": labels}


@dataclass
class CausalLMParams(LanguageModelParams):
    # the output layer + loss: auto = chunked on a CPU, Liger Kernel's fused kernel on CUDA where installed,
    # else plain (see mmssl.models.lm.resolve_output_loss)
    output_loss: OutputLoss = "auto"


@register_objective("clm")
class CausalLM(LanguageModeling):
    """GPT-style causal LM: predict every next token (Radford et al. 2019, "Language Models are
    Unsupervised Multitask Learners")."""

    Params = CausalLMParams
    output = ModelOutput("clm", "transformers", "text-generation", "clm.md", "text-generation")
    kind = "clm"
    tokenizer_kind = "bpe"

    def _check_tokenizer(self) -> None:
        if self.tokenizer.pad_token_id is None and not self.params.packing:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _wrap(self, model) -> nn.Module:
        self.output_loss = resolve_output_loss(self.params.output_loss, self.recipe.train.on_cuda)
        return CausalLMModule(model, output_loss=self.output_loss)

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        labels = ids if mask is None else ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
