"""The word-mask view: a fraction of a text's words masked, the text counterpart of the image patch mask
(`mmssl.data.image_views.generic`) and a modality-agnostic positive (no synonyms, no translation model)."""

from __future__ import annotations

import random

from mmssl.data.text_views.base import View
from mmssl.data.text_views.config import ViewConfig


class WordMask(View):
    """Mask ``max(min_edits, round(p * n))`` of a text's ``n`` whitespace-separated words (capped at
    `max_edits` and at ``n - 1``, so a word always survives): each is replaced by `mask_token`, or dropped when
    `mask_token` is None. The words are drawn per (seed, name, index), whatever the batch. A one-word text
    cannot be masked (None: the caller keeps the text, a dropout-only positive)."""

    def __init__(self, name: str = "mask", seed: int = 0, p: float = 0.1, mask_token: str | None = None,
                 min_edits: int = 1, max_edits: int | None = None) -> None:
        if not 0 < p <= 1:
            raise ValueError(f"mask view: p must be in (0, 1], got {p}")
        self.name, self.seed, self.p, self.mask_token = name, seed, p, mask_token
        self.min_edits, self.max_edits = min_edits, max_edits

    def count(self, words: int) -> int:
        """How many of `words` words are masked."""
        n = max(self.min_edits, round(self.p * words))
        if self.max_edits is not None:
            n = min(n, self.max_edits)
        return max(0, min(n, words - 1))

    def apply_one(self, text: str, rng: random.Random, index: int) -> str | None:
        words = text.split()
        masked = set(rng.sample(range(len(words)), self.count(len(words)))) if words else set()
        if not masked:
            return None
        if self.mask_token is None:
            return " ".join(w for i, w in enumerate(words) if i not in masked)
        return " ".join(self.mask_token if i in masked else w for i, w in enumerate(words))

    def describe(self) -> dict:
        return {"name": self.name, "type": type(self).__name__, "p": self.p, "mask_token": self.mask_token,
                "min_edits": self.min_edits, "max_edits": self.max_edits}


def build_mask_view(cfg: ViewConfig, name: str, seed: int = 0) -> WordMask:
    """The `mask` entry of ``text_views`` / an `mmssl augment` recipe."""
    return WordMask(name=name, seed=seed, p=cfg.p, mask_token=cfg.mask_token, min_edits=cfg.min_edits,
                    max_edits=cfg.max_edits)
