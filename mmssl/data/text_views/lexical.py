"""Lexical views: WordNet synonym replacement and random insertion (EDA, Wei & Zou 2019), and nlpaug's
word- and character-level noise (random swap/delete/crop, keyboard typos, common misspellings, random
character edits), plus contextual substitution with any fill-mask model.

Determinism: nlpaug draws from Python's and NumPy's *global* generators. Each example here runs with both
seeded from (seed, view name, row index) and restored afterwards (`seeded_global_rngs`), so a view is a
pure function of its inputs, whatever the batch or order. Synonym/insert/contextual use their own
per-example `random.Random`.
"""

from __future__ import annotations

import random
from typing import Any

from mmssl.data.text_views.base import STOPWORDS, View, example_rng, example_seed, match_case, seeded_global_rngs, split_word
from mmssl.data.text_views.wordnet import get_wordnet
from mmssl.errors import MmsslError


def _count(num_words: int, p: float, minimum: int, maximum: int | None) -> int:
    n = max(minimum, round(p * num_words))
    return min(n, maximum) if maximum else n


class _WordView(View):
    def __init__(self, name: str, seed: int = 0, p: float = 0.1, min_edits: int = 1, max_edits: int | None = None,
                 stopwords: frozenset[str] = STOPWORDS) -> None:
        self.name, self.seed, self.p, self.min_edits, self.max_edits = name, seed, p, min_edits, max_edits
        self.stopwords = stopwords

    def _candidates(self, tokens: list[str]) -> list[tuple[int, tuple[str, str, str]]]:
        out = []
        for i, token in enumerate(tokens):
            parts = split_word(token)
            if parts and parts[1].lower() not in self.stopwords and parts[1].isalpha():
                out.append((i, parts))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "type": type(self).__name__, "p": self.p, "max_edits": self.max_edits}


class SynonymReplace(_WordView):
    """Replace up to p·n non-stopwords by a WordNet synonym (offline, Debian `wordnet-base`)."""

    def __init__(self, name: str = "synonym", seed: int = 0, p: float = 0.1, wordnet_dir: str | None = None,
                 max_senses: int = 1, **kw: Any) -> None:
        super().__init__(name, seed, p, **kw)
        self.wordnet = get_wordnet(wordnet_dir)
        self.max_senses = max_senses

    def _synonyms(self, word: str) -> list[str]:
        # drop multi-word synonyms that repeat the word ("square" -> "square up")
        lower = word.lower()
        return [s for s in self.wordnet.synonyms(word, max_senses=self.max_senses)
                if s.lower() != lower and lower not in s.lower().split()]

    def apply_one(self, text: str, rng: random.Random, index: int) -> str | None:
        tokens = text.split()
        candidates = self._candidates(tokens)
        rng.shuffle(candidates)
        todo = _count(len(tokens), self.p, self.min_edits, self.max_edits)
        done = 0
        for i, (lead, core, trail) in candidates:
            if done >= todo:
                break
            options = self._synonyms(core)
            if options:
                tokens[i] = lead + match_case(rng.choice(options), core) + trail
                done += 1
        return " ".join(tokens) if done else None


class RandomInsert(SynonymReplace):
    """EDA random insertion: p·n times, insert a synonym of a random non-stopword at a random position."""

    def __init__(self, name: str = "insert", **kw: Any) -> None:
        super().__init__(name=name, **kw)

    def apply_one(self, text: str, rng: random.Random, index: int) -> str | None:
        tokens = text.split()
        candidates = self._candidates(tokens)
        todo = _count(len(tokens), self.p, self.min_edits, self.max_edits)
        done, tries = 0, 0
        while done < todo and candidates and tries < 4 * todo + 10:
            tries += 1
            _, (_, core, _) = rng.choice(candidates)
            options = self._synonyms(core)
            if options:
                tokens.insert(rng.randint(0, len(tokens)), rng.choice(options).lower())
                done += 1
        return " ".join(tokens) if done else None


class NlpaugView(View):
    """Any nlpaug augmenter, run with per-example seeded global RNGs."""

    def __init__(self, name: str, augmenter: Any, seed: int = 0, params: dict | None = None) -> None:
        self.name, self.seed, self.augmenter, self.params = name, seed, augmenter, params or {}

    def apply(self, texts: list[str], indices: list[int]) -> list[str | None]:
        out: list[str | None] = []
        for text, index in zip(texts, indices):
            with seeded_global_rngs(example_seed(self.seed, self.name, index)):
                result = self.augmenter.augment(text)
            if isinstance(result, list):
                result = result[0] if result else None
            out.append(result if result else None)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "type": type(self.augmenter).__name__, **self.params}


def nlpaug_view(kind: str, name: str | None = None, seed: int = 0, p: float = 0.1, min_edits: int = 1,
                max_edits: int | None = None, char_p: float = 0.3, stopwords: frozenset[str] = STOPWORDS) -> NlpaugView:
    """nlpaug views: swap, delete, crop (RandomWordAug), keyboard (KeyboardAug), spelling (SpellingAug),
    char_insert/char_substitute/char_swap/char_delete (RandomCharAug), ocr (OcrAug)."""
    try:
        import nlpaug.augmenter.char as nac
        import nlpaug.augmenter.word as naw
    except ImportError:
        raise MmsslError(f"view {kind!r} needs nlpaug: pip install 'nlpaug>=1.1.11' (or mmssl[text])") from None
    maximum = max_edits if max_edits else 10_000
    stop = sorted(stopwords)
    if kind in ("swap", "delete", "crop"):
        aug = naw.RandomWordAug(action=kind, aug_p=p, aug_min=min_edits, aug_max=maximum,
                                stopwords=stop if kind != "swap" else None)
    elif kind == "keyboard":
        aug = nac.KeyboardAug(aug_word_p=p, aug_word_min=min_edits, aug_word_max=maximum, aug_char_p=char_p,
                              aug_char_max=2, stopwords=stop, include_numeric=False, include_special_char=False)
    elif kind == "spelling":
        aug = naw.SpellingAug(aug_p=p, aug_min=min_edits, aug_max=maximum, stopwords=stop)
    elif kind.startswith("char_"):
        aug = nac.RandomCharAug(action=kind[5:], aug_word_p=p, aug_word_min=min_edits, aug_word_max=maximum,
                                aug_char_p=char_p, aug_char_max=2, stopwords=stop, include_numeric=False,
                                spec_char="")
    elif kind == "ocr":
        aug = nac.OcrAug(aug_word_p=p, aug_word_min=min_edits, aug_word_max=maximum, aug_char_p=char_p,
                         stopwords=stop)
    else:
        raise MmsslError(f"unknown nlpaug view {kind!r}")
    return NlpaugView(name or kind, aug, seed, {"p": p, "max_edits": max_edits})


class ContextualSubstitute(_WordView):
    """Replace up to p·n non-stopwords by a fill-mask model's prediction in context (e.g. an mmssl MLM output
    folder: any model `pipeline("fill-mask", model=DIR)` loads). Each chosen word is masked on its own in
    the original sentence; one batch of masked sentences per call."""

    def __init__(self, model: str, name: str = "contextual", seed: int = 0, p: float = 0.15, top_k: int = 5,
                 device: str = "auto", batch_size: int = 32, **kw: Any) -> None:
        super().__init__(name, seed, p, **kw)
        from transformers import pipeline

        from mmssl.data.text_views.backtranslation import resolve_device

        from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

        refuse_prompts()
        try:
            self.pipe = pipeline("fill-mask", model=model, device=resolve_device(device), trust_remote_code=False)
        except Exception as exc:
            if is_custom_code_error(exc):
                raise custom_code_error(f"view {name!r} model", model, None) from None
            raise MmsslError(f"view {name!r}: {model!r} is not a fill-mask model that transformers can load "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
        self.mask = self.pipe.tokenizer.mask_token
        self.model_path, self.top_k, self.batch_size = model, top_k, batch_size

    def apply(self, texts: list[str], indices: list[int]) -> list[str | None]:
        plans = []
        queries: list[str] = []
        for text, index in zip(texts, indices):
            rng = example_rng(self.seed, self.name, index)
            tokens = text.split()
            candidates = self._candidates(tokens)
            rng.shuffle(candidates)
            chosen = candidates[: _count(len(tokens), self.p, self.min_edits, self.max_edits)]
            jobs = []
            for i, (lead, core, trail) in chosen:
                masked = tokens[:i] + [lead + self.mask + trail] + tokens[i + 1:]
                jobs.append((i, lead, core, trail, len(queries)))
                queries.append(" ".join(masked))
            plans.append((tokens, jobs, rng))
        predictions = self.pipe(queries, top_k=self.top_k, batch_size=self.batch_size) if queries else []
        if len(queries) == 1:
            predictions = [predictions]
        out: list[str | None] = []
        for tokens, jobs, rng in plans:
            tokens = list(tokens)
            done = 0
            for i, lead, core, trail, q in jobs:
                options = [p["token_str"].strip() for p in predictions[q]]
                options = [o for o in options if o.isalpha() and o.lower() != core.lower()]
                if options:
                    tokens[i] = lead + match_case(rng.choice(options), core) + trail
                    done += 1
            out.append(" ".join(tokens) if done else None)
        return out

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model_path, "top_k": self.top_k}
