"""Typed configuration of text views and of `mmssl augment` recipes (validated by `mmssl.schema.from_dict`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Annotated, Literal

from mmssl.config import DataConfig
from mmssl.schema import NonNegativeInt, PositiveFloat, PositiveInt, Range, Seed

LEXICAL = ("synonym", "insert", "swap", "delete", "crop", "keyboard", "spelling", "ocr",
           "char_insert", "char_substitute", "char_swap", "char_delete")
ViewType = Literal["backtranslation", "contextual", "synonym", "insert", "swap", "delete", "crop", "keyboard",
                   "spelling", "ocr", "char_insert", "char_substitute", "char_swap", "char_delete", "mask",
                   "counterfactual"]


@dataclass
class PivotConfig:
    """One round trip. transformers: `forward` (source→pivot) and `backward` (pivot→source) are model folders
    or Hub ids (the same multilingual model twice is fine); apertium: `forward` is a mode (eng-spa) and
    `backward` defaults to its reverse (spa-eng)."""

    forward: str
    backward: str | None = None
    source_lang: str | None = None
    pivot_lang: str | None = None
    name: str | None = None


@dataclass
class GenerationConfig:
    """How translations are generated (every field is part of the translation cache key)."""

    num_beams: PositiveInt = 4
    do_sample: bool = False
    top_k: NonNegativeInt = 0
    top_p: Annotated[float, Range(0, 1, open_low=True)] = 0.95
    temperature: PositiveFloat = 1.0
    max_length: Annotated[int, Range(2)] = 128  # tokens: inputs are truncated to it, outputs never exceed it
    length_ratio: PositiveFloat = 2.0   # each output's cap: ratio × its own input length + extra
    length_extra: NonNegativeInt = 10
    batch_size: PositiveInt = 64


@dataclass
class ViewConfig:
    """One way of making a positive. Lexical: `p` (fraction of words edited), `min_edits`, `max_edits`;
    keyboard/char/ocr also `char_p`; synonym/insert: `wordnet_dir`, `max_senses`; contextual: `model`
    (fill-mask folder or Hub id), `top_k`; backtranslation: `backend`, `pivots`, `generation`, `device`; mask
    (the modality-agnostic view: a fraction `p` of the words masked): `mask_token`; counterfactual (swap gendered
    or group terms, both directions): `word_pairs`."""

    type: ViewType
    name: str | None = None
    p: Annotated[float, Range(0, 1, open_low=True)] = 0.1
    min_edits: NonNegativeInt = 1
    max_edits: NonNegativeInt | None = None
    char_p: Annotated[float, Range(0, 1, open_low=True)] = 0.3
    wordnet_dir: str | None = None
    max_senses: PositiveInt = 1
    model: str | None = None
    top_k: PositiveInt = 5
    backend: Literal["transformers", "apertium"] = "transformers"
    pivots: list[PivotConfig] = field(default_factory=list)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    device: str = "auto"
    mask_token: str | None = None  # mask: the string put in place of a masked word (None: the word is dropped)
    word_pairs: str = "gender"  # counterfactual: a built-in list name or a file of "word,counterpart" lines

    def __post_init__(self) -> None:
        if self.max_edits is not None and self.max_edits < self.min_edits:
            raise ValueError("max_edits must be >= min_edits")
        if self.type == "backtranslation":
            if not self.pivots:
                raise ValueError("a backtranslation view needs pivots, e.g. pivots: [{forward: eng-spa}] "
                                 "(apertium) or [{forward: Helsinki-NLP/opus-mt-en-de, backward: "
                                 "Helsinki-NLP/opus-mt-de-en}]")
            if self.backend == "transformers" and any(not p.backward for p in self.pivots):
                raise ValueError("transformers back-translation needs pivots[].backward (pivot → source model)")
        if self.type == "contextual" and not self.model:
            raise ValueError("a contextual view needs model (a fill-mask model folder or Hub id)")

    @property
    def label(self) -> str:
        return self.name or self.type


@dataclass
class OutputConfig:
    """`path`: a .jsonl or .parquet file, or a folder for `format: disk` (datasets `save_to_disk`)."""

    path: str
    format: Literal["auto", "jsonl", "parquet", "disk"] = "auto"
    overwrite: bool = False

    @property
    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        lower = self.path.lower()
        if lower.endswith((".jsonl", ".json")):
            return "jsonl"
        if lower.endswith(".parquet"):
            return "parquet"
        return "disk"


@dataclass
class QualityConfig:
    drop_identical: bool = True
    encoder: str | None = None
    min_similarity: Annotated[float, Range(-1, 1)] | None = None
    max_similarity: Annotated[float, Range(-1, 1)] | None = None
    batch_size: PositiveInt = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        if (self.min_similarity is not None or self.max_similarity is not None) and not self.encoder:
            raise ValueError("quality.min_similarity/max_similarity need quality.encoder (SentenceTransformer folder)")
        if (self.min_similarity is not None and self.max_similarity is not None
                and self.min_similarity > self.max_similarity):
            raise ValueError("quality.min_similarity must be <= quality.max_similarity")


def default_cache_path() -> str:
    base = os.environ.get("MMSSL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mmssl")
    return os.path.join(base, "translations.sqlite")


@dataclass
class CacheConfig:
    enabled: bool = True
    path: str | None = None  # default: $MMSSL_CACHE or ~/.cache/mmssl, file translations.sqlite


@dataclass
class AugmentConfig:
    """An `mmssl augment` recipe: sentences in (role `text`; map a column with data.columns.text), one
    positive per view per sentence out (columns anchor, positive, view, source_index)."""

    output: OutputConfig
    views: list[ViewConfig]
    name: str = ""
    seed: Seed = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(eval_fraction=0.0))
    max_words: PositiveInt = 256
    cache: CacheConfig = field(default_factory=CacheConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("give at least one view, e.g. views: [{type: synonym, p: 0.1}]")
        names = [v.label for v in self.views]
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique (got {names}); set views[i].name")
