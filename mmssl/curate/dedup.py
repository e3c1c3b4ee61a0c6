"""Exact duplicates (xxhash of raw image bytes and of normalised text) and near-duplicate texts (MinHash LSH
from datasketch over character n-grams). Only kept samples are remembered, so a duplicate always points at a
sample that is in the output."""

from __future__ import annotations

from typing import Any

import xxhash

from mmssl.curate.config import ExactDedup, NearDedup
from mmssl.errors import RecipeError


def digest(data: bytes | str) -> bytes:
    return xxhash.xxh3_128_digest(data.encode("utf-8") if isinstance(data, str) else data)


class Exact:
    """Seen image and text hashes -> the key of the kept sample that had them."""

    def __init__(self, cfg: ExactDedup, kind: str):
        self.by = {"images": "image", "text": "caption"}.get(kind, cfg.by)
        self.images: dict[bytes, str] = {}
        self.texts: dict[bytes, str] = {}
        self.pairs: dict[bytes, str] = {}

    @staticmethod
    def hashes(image: bytes | None, text: str | None) -> tuple[bytes | None, bytes | None]:
        """The digests of the raw image bytes and of the (already normalised) text."""
        return (digest(image) if image is not None else None), (digest(text) if text is not None else None)

    def check(self, hashes: tuple[bytes | None, bytes | None]) -> str | None:
        h_image, h_text = hashes
        if self.by == "pair":
            first = self.pairs.get(digest((h_image or b"") + (h_text or b"")))
            return f"same image and caption as {first}" if first else None
        if self.by in ("image", "either") and h_image is not None and h_image in self.images:
            return f"same image as {self.images[h_image]}"
        if self.by in ("caption", "either") and h_text is not None and h_text in self.texts:
            what = "caption" if h_image is not None else "text"
            return f"same {what} as {self.texts[h_text]}"
        return None

    def add(self, key: str, hashes: tuple[bytes | None, bytes | None]) -> None:
        h_image, h_text = hashes  # only what `by` compares is remembered
        if h_image is not None and self.by in ("image", "either"):
            self.images.setdefault(h_image, key)
        if h_text is not None and self.by in ("caption", "either"):
            self.texts.setdefault(h_text, key)
        if self.by == "pair":
            self.pairs.setdefault(digest((h_image or b"") + (h_text or b"")), key)


class Near:
    """MinHash LSH over character n-grams; one template MinHash's permutations are shared by all."""

    def __init__(self, cfg: NearDedup):
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            raise RecipeError("filters.near_dedup needs datasketch: pip install 'mmssl[curate]'") from None
        self.cfg = cfg
        self._minhash = MinHash
        self.template = MinHash(cfg.num_perm, seed=cfg.seed, scheme="affine32")
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        self.keys: list[str] = []
        self.values: list[Any] = []  # the kept signatures' hash values: LSH candidates are checked against them

    def signature(self, text: str) -> Any:
        n = self.cfg.ngram
        grams = {text[i : i + n].encode("utf-8") for i in range(max(1, len(text) - n + 1))}
        sketch = self._minhash(self.cfg.num_perm, permutations=self.template.permutations, scheme="affine32")
        sketch.update_batch(list(grams))  # MinHash is a minimum: the order does not matter
        return sketch

    def check(self, sketch: Any) -> str | None:
        """Why the text whose `signature` is `sketch` nearly repeats a kept one, or None."""
        similar = []
        for index in self.lsh.query(sketch):
            similarity = float((self.values[index] == sketch.hashvalues).mean())
            if similarity >= self.cfg.threshold:
                similar.append((index, similarity))
        if similar:
            index, similarity = min(similar)
            return f"near-duplicate of {self.keys[index]} (Jaccard ~{similarity:.2f})"
        return None

    def add(self, key: str, sketch: Any) -> None:
        self.lsh.insert(len(self.keys), sketch)
        self.keys.append(key)
        self.values.append(sketch.hashvalues)
