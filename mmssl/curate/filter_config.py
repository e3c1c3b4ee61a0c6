"""The per-sample filters' settings (caption, image, text quality, language): shared by `mmssl curate` and by a
training recipe's ``data.curate`` section, which filters its stream on the fly. Depends on the schema only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from mmssl.schema import NonNegativeFloat, NonNegativeInt, PositiveInt, Probability, Range


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
class StreamFilters:
    """``data.curate`` of a training recipe: the per-sample filters run on each streamed record, before it is
    decoded for training; a filter runs when named (``caption: {}`` uses its defaults). A dropped record is
    counted under ``curate <filter>`` with the stream's other skips. Deduplication and the CLIP score need
    the whole data (or a model per loader worker): run ``mmssl curate`` for those."""

    caption: CaptionFilter | None = None
    image: ImageFilter | None = None
    text: TextFilter | None = None
    language: LanguageFilter | None = None
