"""The typed `mmssl curate` config: plain dataclasses validated by `mmssl.schema` (unknown keys fail with the
dotted key and a hint; every number has a range). Every filter is optional: ``null`` turns it off."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from mmssl.config import DataConfig
from mmssl.errors import RecipeError
from mmssl.schema import NonNegativeFloat, NonNegativeInt, PositiveInt, Probability, Range, Seed, from_dict

Kind = Literal["image_text", "images", "text"]


@dataclass
class CaptionFilter:
    """Captions of image-text samples (the first caption, the one written as ``KEY.txt``)."""

    min_words: NonNegativeInt = 2
    max_words: PositiveInt = 100
    min_chars: NonNegativeInt = 5
    max_chars: PositiveInt = 1000
    boilerplate: bool = True  # alt-text like "image", "untitled", "IMG_1234.jpg", "stock photo", URLs
    extra_boilerplate: list[str] = field(default_factory=list)  # more whole captions to drop (compared normalised)


@dataclass
class ImageFilter:
    """Image size, aspect ratio and blank (near-uniform) images."""

    min_side: PositiveInt = 32  # pixels of the shorter side
    max_aspect_ratio: Annotated[float, Range(1)] = 3.0  # longer side / shorter side
    min_pixel_std: NonNegativeFloat = 2.0  # standard deviation of the pixel values (0..255); below: blank


@dataclass
class TextFilter:
    """Quality rules for text data."""

    min_words: NonNegativeInt = 5
    max_non_alpha_fraction: Probability = 0.3  # of the non-space characters


@dataclass
class LanguageFilter:
    """py3langid on the caption (image-text) or the text: keep the listed languages."""

    keep: list[str] = field(default_factory=lambda: ["en"])
    # the languages the data may hold (ISO 639-1); the identifier then chooses among these only (much more
    # accurate on short captions). null: all 97 languages of the model
    expected: list[str] | None = None
    # a sample is dropped when its language is not kept and identified with at least this probability
    min_confidence: Probability = 0.5


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
class Filters:
    caption: CaptionFilter | None = field(default_factory=CaptionFilter)
    image: ImageFilter | None = field(default_factory=ImageFilter)
    text: TextFilter | None = field(default_factory=TextFilter)
    language: LanguageFilter | None = None
    exact_dedup: ExactDedup | None = field(default_factory=ExactDedup)
    near_dedup: NearDedup | None = field(default_factory=NearDedup)


@dataclass
class CurateConfig:
    input: DataConfig
    output_dir: str
    kind: Kind = "image_text"
    filters: Filters = field(default_factory=Filters)
    shard_size: PositiveInt = 1000  # samples per output shard
    report_examples: NonNegativeInt = 20  # dropped samples shown per filter in curate_report.json

    def __post_init__(self) -> None:
        if self.input.source == "hub":
            raise ValueError("input.source: mmssl curate reads local data and the built-in world (prepare a Hub "
                             "dataset's files first)")


def parse_curate_config(raw: object) -> CurateConfig:
    return from_dict(CurateConfig, raw, "")


def load_curate_config(path: str | Path, overrides: list[str] | None = None) -> CurateConfig:
    """Read a YAML config and apply dotted ``key=value`` overrides."""
    from mmssl.recipes import apply_overrides, read_yaml

    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise RecipeError(f"{str(path)!r}: expected a mapping of keys to values")
    return parse_curate_config(apply_overrides(raw, list(overrides or [])))
