"""Compositional hard-negative captions (NegCLIP, Yuksekgonul et al. 2023, "When and why vision-language models
behave like bags-of-words"): the same words in another order, so that a model must read word order, relations
and which attribute belongs to which object to tell the caption from them.

A parser-free heuristic for English captions (no spaCy/nltk: none is installed here). Noun phrases are spans
that start at a determiner (a, an, the, ...) and end before a stop word (a relation, a verb such as "is", a
conjunction, punctuation); the last word of a span is its head noun, the words between are its modifiers.
Four kinds of negatives:

* ``relation``: a relation or position word replaced by its opposite (left/right, above/below, top/bottom, ...);
* ``objects``: the two noun phrases around a relation exchanged ("a red circle left of a blue square" ->
  "a blue square left of a red circle");
* ``attributes``: the modifiers next to the nouns of two noun phrases exchanged ("a blue circle left of a red
  square"; in English that is the colour, after size words, which are left in place);
* ``noun``: one head noun replaced by another noun of the caption set (`nouns`), e.g. a shape by another.

On the built-in world's grammar every kind is exact: tested on every caption the world can produce, the
negatives keep the caption's words (swaps), differ from it and never mean the same (the world's meaning
keys). On other English it is a heuristic: a verb taken for a noun yields a less useful negative, never a
crash; captions it cannot read get no negatives.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence

KINDS = ("relation", "objects", "attributes", "noun")
DETERMINERS = {"a", "an", "the", "one", "two", "some", "this", "that"}
STOP_WORDS = {"and", "or", "but", "is", "are", "was", "were", "there", "with", "placed", "sits", "stands", "lies",
              "of", "in", "on", "at", "to", "near", "next", "by", "from", "under", "over", "above", "below",
              "behind", "left", "right", "top", "bottom", "middle", "while", "which", "that", "who", "has", "have"}
# each relation phrase and its opposite, longest first so that "to the left of" wins over "left of"
OPPOSITES = {
    "to the left of": "to the right of", "to the right of": "to the left of",
    "on top of": "underneath", "underneath": "on top of",
    "in front of": "behind", "behind": "in front of",
    "on the left": "on the right", "on the right": "on the left",
    "at the top": "at the bottom", "at the bottom": "at the top",
    "left of": "right of", "right of": "left of",
    "above": "below", "below": "above", "over": "under", "under": "over",
    "before": "after", "after": "before", "inside": "outside", "outside": "inside",
}
BINARY = {"to the left of", "to the right of", "left of", "right of", "above", "below", "on top of", "underneath",
          "in front of", "behind", "over", "under", "inside", "outside", "before", "after"}
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _join(tokens: Sequence[str]) -> str:
    out = ""
    for t in tokens:
        out += t if (not out or re.fullmatch(r"[^\w\s]", t)) else " " + t
    return out


def _fix_articles(tokens: list[str]) -> list[str]:
    """a/an agree with the next word after words moved."""
    out = list(tokens)
    for i, t in enumerate(out[:-1]):
        if t.lower() in ("a", "an"):
            an = out[i + 1][:1].lower() in "aeiou"
            out[i] = ("An" if an else "A") if t[0].isupper() else ("an" if an else "a")
    return out


def _relations(tokens: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, phrase) of each relation phrase, longest match first, left to right."""
    lower = [t.lower() for t in tokens]
    found, i = [], 0
    while i < len(lower):
        for phrase in OPPOSITES:
            words = phrase.split()
            if lower[i : i + len(words)] == words:
                found.append((i, i + len(words), phrase))
                i += len(words)
                break
        else:
            i += 1
    return found


def _verb_like(word: str) -> bool:
    """A participle such as "sitting" or "holding" ends a noun phrase (a crude stand-in for a tagger)."""
    return len(word) > 5 and word.lower().endswith("ing")


def _noun_phrases(tokens: list[str], inside: set[int]) -> list[tuple[int, int]]:
    """(start, end) spans: a determiner, then words up to a stop word, punctuation or a relation phrase."""
    spans, i = [], 0
    while i < len(tokens):
        if tokens[i].lower() in DETERMINERS and i not in inside:
            j = i + 1
            while (j < len(tokens) and j not in inside and tokens[j].isalnum() and not _verb_like(tokens[j])
                   and tokens[j].lower() not in STOP_WORDS and tokens[j].lower() not in DETERMINERS):
                j += 1
            if j > i + 1:
                spans.append((i, j))
            i = j
        else:
            i += 1
    return spans


def _parse(caption: str) -> tuple[list[str], list[tuple[int, int, str]], list[tuple[int, int]]]:
    """A caption's tokens, its relation phrases and its noun phrases (outside the relation phrases)."""
    tokens = _tokens(caption)
    relations = _relations(tokens)
    inside = {k for start, end, _ in relations for k in range(start, end)}
    return tokens, relations, _noun_phrases(tokens, inside)


def caption_negatives(caption: str, kinds: Iterable[str] = KINDS, nouns: Sequence[str] = ()) -> list[str]:
    """Every negative of the given kinds the heuristic can make for `caption` (deduplicated, none equal to
    it); ``nouns`` are the replacement candidates of kind ``noun``."""
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown caption negative kinds {sorted(unknown)}; choose from {list(KINDS)}")
    tokens, relations, phrases = _parse(caption)
    out: list[list[str]] = []
    if "relation" in kinds:
        for start, end, phrase in relations:
            out.append(tokens[:start] + OPPOSITES[phrase].split() + tokens[end:])
    pair = _pair_around_relation(phrases, relations)
    if pair is not None:
        (a0, a1), (b0, b1) = pair
        if "objects" in kinds:
            out.append(tokens[:a0] + tokens[b0:b1] + tokens[a1:b0] + tokens[a0:a1] + tokens[b1:])
        if "attributes" in kinds:
            attributed = [(s, e) for s, e in phrases if e - s >= 3]  # determiner, modifier(s), noun
            first, second = (pair if all(e - s >= 3 for s, e in pair) else
                             (attributed[0], attributed[1]) if len(attributed) >= 2 else (None, None))
            if first is not None:  # the modifier next to each noun (English puts colour there, after size)
                (a0, a1), (b0, b1) = first, second
                if tokens[a1 - 2].lower() != tokens[b1 - 2].lower():
                    swapped = list(tokens)
                    swapped[a1 - 2], swapped[b1 - 2] = tokens[b1 - 2], tokens[a1 - 2]
                    out.append(swapped)
    if "noun" in kinds and phrases and nouns:
        start, end = phrases[0]
        head = tokens[end - 1].lower()
        for noun in nouns:
            if noun.lower() != head:
                out.append(tokens[: end - 1] + [noun] + tokens[end:])
    seen, texts = {caption.strip().lower()}, []
    for candidate in out:
        text = _join(_fix_articles(candidate))
        if text.lower() not in seen:
            seen.add(text.lower())
            texts.append(text)
    return texts


def _pair_around_relation(phrases: list[tuple[int, int]], relations: list[tuple[int, int, str]]):
    """The noun phrases just before and just after the first binary relation (or, for a relation that opens
    the caption, the two after it)."""
    for start, end, phrase in relations:
        if phrase not in BINARY:
            continue
        before = [p for p in phrases if p[1] <= start]
        after = [p for p in phrases if p[0] >= end]
        if before and after:
            return before[-1], after[0]
        if not before and len(after) >= 2:
            return after[0], after[1]
    return None


def head_nouns(captions: Iterable[str], limit: int = 200) -> list[str]:
    """The `limit` most frequent head nouns of the captions' noun phrases (replacement candidates)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        tokens, _, phrases = _parse(caption)
        counts.update(tokens[end - 1].lower() for _, end in phrases)
    return [noun for noun, _ in counts.most_common(limit)]


def sample_negatives(captions: Sequence[str], per_caption: int, kinds: Iterable[str], nouns: Sequence[str],
                     rng: random.Random) -> tuple[list[str], list[int]]:
    """Up to `per_caption` negatives of each caption, drawn by `rng` from all the heuristic makes, flattened,
    and for each the position of the caption it was made from."""
    kinds = tuple(kinds)
    texts: list[str] = []
    owners: list[int] = []
    for i, caption in enumerate(captions):
        candidates = caption_negatives(caption, kinds, nouns)
        drawn = rng.sample(candidates, min(per_caption, len(candidates)))
        texts.extend(drawn)
        owners.extend([i] * len(drawn))
    return texts, owners
