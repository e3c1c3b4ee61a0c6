"""The mining recipe: where queries and corpus come from, how candidates are scored, which are kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml

from mmssl.config import DataConfig
from mmssl.recipes import apply_overrides, read_yaml
from mmssl.schema import (NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range, Seed,
                          from_dict, to_dict)


@dataclass
class BM25Config:
    k1: NonNegativeFloat = 1.5
    b: Probability = 0.75
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stopwords: str | None = "en"
    stemmer: str | None = None  # a PyStemmer language, e.g. "english"
    lowercase: bool = True
    index_dir: str | None = None  # save the index here (reloaded memory-mapped when it exists)


@dataclass
class DenseConfig:
    model: str | None = None  # SentenceTransformer folder (an mmssl output), or Hub id
    batch_size: PositiveInt = 64
    max_seq_length: PositiveInt | None = None
    cache_dir: str | None = None  # embeddings cached on disk, keyed by model and text
    chunk_size: PositiveInt = 4096  # queries scored per matrix product
    use_faiss: bool = False
    trust_remote_code: bool = False  # run custom code that comes with dense.model


@dataclass
class HybridConfig:
    fusion: Literal["rrf", "weighted"] = "rrf"
    rrf_k: NonNegativeInt = 60
    dense_weight: Probability = 0.5


@dataclass
class GuardConfig:
    """Defences against false negatives (candidates that are actually relevant)."""

    exclude_duplicates: bool = True  # the positive, the query, or a normalised-text duplicate of either
    max_relative_score: PositiveFloat | None = 0.95  # keep if score <= this x the positive's score
    min_margin: NonNegativeFloat | None = None  # keep if score <= positive's score - margin
    dense_max_similarity: Annotated[float, Range(-1, 1)] | None = None  # cross-check: drop candidates the encoder finds this similar
    bm25_max_relative_score: PositiveFloat | None = None  # cross-check for dense candidates, vs the positive's BM25


@dataclass
class MiningConfig:
    output: str
    data: DataConfig = field(default_factory=DataConfig)
    corpus: DataConfig | None = None
    method: Literal["bm25", "dense", "hybrid"] = "bm25"
    num_negatives: PositiveInt = 5
    skip_top: NonNegativeInt = 0  # ignore the first ranks (most likely false negatives)
    window: PositiveInt = 30  # candidates considered per query, after skip_top
    sampling: Literal["top", "random"] = "top"
    seed: Seed = 0
    overwrite: bool = False  # replace an earlier `mmssl mine` output at the same path
    bm25: BM25Config = field(default_factory=BM25Config)
    dense: DenseConfig = field(default_factory=DenseConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    guards: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        if self.window < self.num_negatives:
            raise ValueError(f"window ({self.window}) must be >= num_negatives ({self.num_negatives})")
        if self.method in ("dense", "hybrid") and not self.dense.model:
            raise ValueError(f"method {self.method!r} needs dense.model (a SentenceTransformer folder or Hub id)")
        if self.guards.dense_max_similarity is not None and not self.dense.model:
            raise ValueError("guards.dense_max_similarity needs dense.model for the cross-check")
        if Path(self.output).suffix not in (".jsonl", ".parquet", ""):
            raise ValueError("output must end in .jsonl or .parquet, or be a folder (datasets save_to_disk)")


def load_mining_config(path: str | Path, overrides: list[str] | None = None) -> MiningConfig:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return from_dict(MiningConfig, raw)


def dump(config: MiningConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
