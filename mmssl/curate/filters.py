"""Heuristic filters: each returns None for a sample it keeps, or a short reason for one it drops."""

from __future__ import annotations

import re
import unicodedata
from typing import Any


from mmssl.curate.filter_config import CaptionFilter, ImageFilter, LanguageFilter, TextFilter

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")

# whole captions (normalised) that say nothing about the image
BOILERPLATE = frozenset({
    "image", "img", "images", "photo", "photos", "picture", "pictures", "pic", "pics", "untitled", "untitled image",
    "no title", "none", "null", "n a", "na", "default", "placeholder", "thumbnail", "thumb", "logo", "icon",
    "banner", "screenshot", "screen shot", "image not found", "no image", "no image available",
    "image unavailable", "stock photo", "stock image", "stock picture", "click here", "click to enlarge",
    "read more", "download", "alt", "alt text", "featured image", "main image", "product image",
})
_FILE_NAME = re.compile(r"^\S+\.(jpe?g|png|gif|webp|bmp|tiff?|svg|heic)$", re.IGNORECASE)
_CAMERA_NAME = re.compile(r"^(img|dsc|dscn|dscf|dcim|pic|photo|image|screenshot|pxl|mvimg|gopr)[\s_-]*\d+",
                          re.IGNORECASE)
_URL = re.compile(r"(https?://|www\.)\S+|\S+\.(com|net|org|io)(/\S*)?\b", re.IGNORECASE)
_PHRASES = re.compile(r"\b(stock photos?|stock images?|click here|click to enlarge|royalty[- ]free|"
                      r"all rights reserved)\b", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lower case, NFKC, punctuation removed, whitespace collapsed: what exact and near dedup compare."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.replace("_", " "))).strip()


def boilerplate(caption: str, extra: frozenset[str] = frozenset()) -> str | None:
    """Why `caption` is boilerplate alt-text, or None."""
    text = caption.strip()
    if _FILE_NAME.match(text):
        return "file name"
    if _CAMERA_NAME.match(text):
        return "camera file name"
    if _URL.search(text):
        return "URL"
    if _PHRASES.search(text):
        return "stock/click phrase"
    norm = normalise(text)
    if norm in BOILERPLATE or norm in extra:
        return "boilerplate phrase"
    if not any(ch.isalpha() for ch in norm):
        return "no letters"
    return None


def check_caption(caption: str, cfg: CaptionFilter) -> str | None:
    words, chars = len(caption.split()), len(caption.strip())
    if cfg.boilerplate:
        why = boilerplate(caption, frozenset(normalise(e) for e in cfg.extra_boilerplate))
        if why:
            return f"boilerplate caption ({why})"
    if words < cfg.min_words:
        return f"caption too short ({words} words < {cfg.min_words})"
    if words > cfg.max_words:
        return f"caption too long ({words} words > {cfg.max_words})"
    if chars < cfg.min_chars:
        return f"caption too short ({chars} characters < {cfg.min_chars})"
    if chars > cfg.max_chars:
        return f"caption too long ({chars} characters > {cfg.max_chars})"
    return None


def image_stats(image: Any) -> tuple[int, int, float]:
    """(width, height, pixel standard deviation on 0..255) of a PIL image: each channel's std over the pixels
    of a thumbnail, averaged over the channels (a one-colour image has 0 whatever its colour)."""
    from PIL import ImageStat

    thumb = image.copy()
    thumb.thumbnail((128, 128))
    stddev = ImageStat.Stat(thumb).stddev
    return image.width, image.height, float(sum(stddev) / len(stddev))


def check_image(image: Any, cfg: ImageFilter) -> str | None:
    width, height, std = image_stats(image)
    if min(width, height) < cfg.min_side:
        return f"image too small ({width}x{height}, shorter side < {cfg.min_side})"
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > cfg.max_aspect_ratio:
        return f"extreme aspect ratio ({width}x{height}: {ratio:.1f} > {cfg.max_aspect_ratio:g})"
    if std < cfg.min_pixel_std:
        return f"blank image (pixel std {std:.2f} < {cfg.min_pixel_std:g})"
    return None


def check_text(text: str, cfg: TextFilter) -> str | None:
    words = len(text.split())
    if words < cfg.min_words:
        return f"text too short ({words} words < {cfg.min_words})"
    chars = [ch for ch in text if not ch.isspace()]
    if chars:
        fraction = sum(not ch.isalpha() for ch in chars) / len(chars)
        if fraction > cfg.max_non_alpha_fraction:
            return f"too many non-letters ({fraction:.0%} > {cfg.max_non_alpha_fraction:.0%})"
    return None


class Language:
    """py3langid's identifier (its model ships in the wheel), restricted to `cfg.expected` when given."""

    def __init__(self, cfg: LanguageFilter):
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError:
            from mmssl.errors import RecipeError

            raise RecipeError("filters.language needs py3langid: pip install 'mmssl[curate]'") from None
        self.cfg = cfg
        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        if cfg.expected:
            known = set(self.identifier.nb_classes)
            unknown = sorted(set(cfg.expected) - known)
            if unknown:
                from mmssl.errors import RecipeError

                raise RecipeError(f"filters.language.expected: {unknown} not known to py3langid; use ISO 639-1 "
                                  f"codes such as {', '.join(sorted(known)[:8])}, ...")
            self.identifier.set_languages(sorted(set(cfg.expected) | set(cfg.keep)))
        self.keep = set(cfg.keep)

    def check(self, text: str) -> str | None:
        language, probability = self.identifier.classify(text)
        if language not in self.keep and probability >= self.cfg.min_confidence:
            return f"language {language} ({probability:.2f})"
        return None


def per_sample_verdict(filters: Any, language: Language | None, caption: str | None = None,
                       text: str | None = None, image: Any = None) -> tuple[str, str] | None:
    """(filter, reason) of the first per-sample filter that drops a sample with this caption, text and decoded
    image, tried in order: `filters`' caption, image and text settings (each skipped when None, or when its
    input is), then `language` on the caption, else the text. None keeps the sample. `filters` is a curate
    config's ``filters`` or a recipe's ``data.curate``."""
    for name, value, check in (("caption", caption, check_caption), ("image", image, check_image),
                               ("text", text, check_text)):
        settings = getattr(filters, name)
        if settings is not None and value is not None:
            reason = check(value, settings)
            if reason:
                return name, reason
    subject = caption if caption is not None else text
    if language is not None and subject:
        reason = language.check(subject)
        if reason:
            return "language", reason
    return None

