"""The typed `mmssl curate` config: plain dataclasses validated by `mmssl.schema` (unknown keys fail with the
dotted key and a hint; every number has a range). Every filter is optional: ``null`` turns it off."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from mmssl.config import DataConfig
from mmssl.curate.filter_config import CaptionFilter, ImageFilter, LanguageFilter, TextFilter
from mmssl.errors import RecipeError
from mmssl.schema import NonNegativeInt, PositiveInt, Range, Seed, from_dict

__all__ = ["CaptionFilter", "ClipScore", "CurateConfig", "ExactDedup", "Filters", "ImageFilter", "LanguageFilter",
           "NearDedup", "SemanticDedup", "TextFilter", "load_curate_config", "parse_curate_config"]

Kind = Literal["image_text", "images", "text"]


@dataclass
class ExactDedup:
    """Exact duplicates: xxhash of the raw image bytes and of the normalised caption or text."""

    # image_text: "image" (the same image bytes), "caption" (the same normalised caption), "either" (the
    # image or the caption was seen), "pair" (the same image with the same caption); images/text use their own
    by: Literal["image", "caption", "either", "pair"] = "image"


@dataclass
class NearDedup:
    """Near-duplicate captions or texts: MinHash LSH (datasketch) over character n-grams of the normalised text."""

    threshold: Annotated[float, Range(0, 1, open_low=True)] = 0.8  # estimated Jaccard similarity
    num_perm: Annotated[int, Range(16, 1024)] = 128
    ngram: Annotated[int, Range(1, 32)] = 5
    seed: Seed = 1


@dataclass
class ClipScore:
    """Image-caption agreement (DataComp's CLIP score): the cosine of a CLIP model's image and first-caption
    embeddings. Keep samples scoring at least `threshold`, or the best `top_fraction` of those the other
    filters kept (one of the two)."""

    # an mmssl CLIP output folder, any open_clip ``local-dir`` folder, or an open_clip architecture name
    model: str
    pretrained: str | None = None  # with an architecture name: its open_clip pretrained tag or a weights file
    threshold: Annotated[float, Range(-1, 1)] | None = None
    top_fraction: Annotated[float, Range(0, 1, open_low=True)] | None = None
    batch_size: PositiveInt = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.top_fraction is None):
            raise ValueError("set exactly one of threshold (keep samples scoring at least it) and top_fraction "
                             "(keep that best fraction, e.g. 0.3 as DataComp's baseline)")


@dataclass
class SemanticDedup:
    """SemDeDup: embed, cluster with faiss k-means, and drop a sample whose cosine similarity to an earlier
    kept sample of its cluster reaches `threshold`."""

    # the encoder: an open_clip / mmssl CLIP folder or name (images and texts) or a sentence-transformers
    # folder (texts); null: filters.clip_score.model
    model: str | None = None
    pretrained: str | None = None
    by: Literal["image", "text"] = "image"  # image-text data: which embedding; images and text use their own
    threshold: Annotated[float, Range(0, 1, open_low=True)] = 0.95
    cluster_size: Annotated[int, Range(2, 1_000_000)] = 1000  # about this many samples per k-means cluster
    batch_size: PositiveInt = 256
    device: str = "auto"
    seed: Seed = 0


@dataclass
class Filters:
    caption: CaptionFilter | None = field(default_factory=CaptionFilter)
    image: ImageFilter | None = field(default_factory=ImageFilter)
    text: TextFilter | None = field(default_factory=TextFilter)
    language: LanguageFilter | None = None
    exact_dedup: ExactDedup | None = field(default_factory=ExactDedup)
    near_dedup: NearDedup | None = field(default_factory=NearDedup)
    clip_score: ClipScore | None = None
    semantic_dedup: SemanticDedup | None = None


@dataclass
class CurateConfig:
    input: DataConfig
    output_dir: str
    kind: Kind = "image_text"
    filters: Filters = field(default_factory=Filters)
    shard_size: PositiveInt = 1000  # samples per output shard
    report_examples: NonNegativeInt = 20  # dropped samples shown per filter in curate_report.json
    # processes that read, decode and filter shards (deduplication stays in the main one); 0: the main one only.
    # The output is the same whatever the number
    workers: NonNegativeInt = 0

    def __post_init__(self) -> None:
        semantic, clip = self.filters.semantic_dedup, self.filters.clip_score
        if semantic is not None and semantic.model is None:
            if clip is None:
                raise ValueError("filters.semantic_dedup.model: give the encoder (an open_clip / mmssl CLIP folder, "
                                 "or a sentence-transformers folder for text), or set filters.clip_score")
            semantic.model, semantic.pretrained = clip.model, clip.pretrained
        if clip is not None and self.kind != "image_text":
            raise ValueError(f"filters.clip_score scores image-caption pairs; kind {self.kind!r} has none "
                             "(set filters.clip_score to null)")


def parse_curate_config(raw: object) -> CurateConfig:
    return from_dict(CurateConfig, raw, "")


def load_curate_config(path: str | Path, overrides: list[str] | None = None) -> CurateConfig:
    """Read a YAML config and apply dotted ``key=value`` overrides."""
    from mmssl.recipes import apply_overrides, read_yaml

    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise RecipeError(f"{str(path)!r}: expected a mapping of keys to values")
    return parse_curate_config(apply_overrides(raw, list(overrides or [])))
