"""Words for word-vector methods (word2vec): one tokenisation rule and a counted vocabulary.

A word is a run of letters, digits or underscores, with inner apostrophes kept (``don't``, ``café's``),
lower-cased unless asked otherwise. The same rule is written into the exported tokenizer
(`word_tokenizer`: a Hugging Face `tokenizers` WordLevel model), so a sentence-transformers model built on the
vectors splits text exactly as training did."""

from __future__ import annotations

import heapq
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mmssl.errors import DataError

WORD_PATTERN = r"\w+(?:['’]\w+)*"
_WORD = re.compile(WORD_PATTERN)
UNKNOWN = "[UNK]"


def words(text: str, lowercase: bool = True) -> list[str]:
    """The words of `text` under mmssl's word rule."""
    return _WORD.findall(text.lower() if lowercase else text)


@dataclass(frozen=True)
class WordVocab:
    """Words kept for training (most frequent first, ties in first-seen order) and their corpus counts."""

    words: list[str]
    counts: list[int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        """Vocabulary ids of `tokens`; words out of the vocabulary are dropped (as word2vec does)."""
        index = self.index  # type: ignore[attr-defined]
        return [i for i in map(index.get, tokens) if i is not None]

    @classmethod
    def count(cls, texts: Iterable[str], min_count: int, max_size: int | None = None,
              lowercase: bool = True) -> WordVocab:
        """Count the words of `texts` (one pass, memory in proportion to the distinct words) and keep those seen
        at least `min_count` times, at most `max_size` of them."""
        counter: Counter[str] = Counter()
        for text in texts:
            counter.update(words(text, lowercase))
        if not counter:
            raise DataError("the training texts hold no words: word2vec needs running text (data.columns.text)")
        kept = [(w, c) for w, c in counter.items() if c >= min_count]  # Counter keeps first-seen order
        if max_size is not None and len(kept) > max_size:
            kept = heapq.nlargest(max_size, kept, key=lambda wc: wc[1])
        kept.sort(key=lambda wc: -wc[1])  # stable: ties stay in first-seen order
        if len(kept) < 2:
            raise DataError(
                f"only {len(kept)} distinct word(s) occur at least objective.min_count={min_count} times in "
                f"{sum(counter.values())} words of text: word2vec needs a corpus with a vocabulary; add text or "
                "lower objective.min_count")
        return cls([w for w, _ in kept], [c for _, c in kept])

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"words": self.words, "counts": self.counts}, ensure_ascii=False))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> WordVocab:
        data = json.loads(path.read_text())
        return cls(list(data["words"]), [int(c) for c in data["counts"]])


def word_tokenizer(vocab: WordVocab, lowercase: bool = True):  # noqa: ANN201 - tokenizers.Tokenizer
    """A `tokenizers` WordLevel tokenizer that splits like `words`; id 0 is ``[UNK]``, word i is id i + 1."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    table = {UNKNOWN: 0, **{w: i + 1 for i, w in enumerate(vocab.words)}}
    tokenizer = Tokenizer(WordLevel(table, unk_token=UNKNOWN))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    return tokenizer
