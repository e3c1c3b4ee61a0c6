"""The view contract: a batch of texts (with their row indices) in, one view per text out.

Every view is a pure function of (seed, view name, row index, text): each example draws its random
numbers from its own generator, seeded from those, so results do not depend on batch size, order or on
which other rows are present. A view returns ``None`` for a text it cannot change.
"""

from __future__ import annotations

import hashlib
import random
import re
from contextlib import contextmanager
from typing import Iterator

import numpy as np

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves there's it's i'm
""".split())

_CORE = re.compile(r"^(\W*)(\w(?:[\w'-]*\w)?)(\W*)$")


def example_seed(seed: int, name: str, index: int) -> int:
    """A 63-bit seed for one example of one view, independent of batching and order."""
    digest = hashlib.sha256(f"{seed}\x1f{name}\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def example_rng(seed: int, name: str, index: int) -> random.Random:
    return random.Random(example_seed(seed, name, index))


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's *global* generators (nlpaug uses them), restoring their states afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def split_word(token: str) -> tuple[str, str, str] | None:
    """('"', 'Dogs', '",') for '"Dogs",': leading punctuation, word core, trailing punctuation."""
    m = _CORE.match(token)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def match_case(replacement: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def normalise(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form, for 'is this view identical to its source?'."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class View:
    """Base of all views. Subclasses implement `apply` (a batch) or `apply_one` (one example)."""

    name: str = "view"
    seed: int = 0

    def apply(self, texts: list[str], indices: list[int]) -> list[str | None]:
        return [self.apply_one(text, example_rng(self.seed, self.name, index), index)
                for text, index in zip(texts, indices)]

    def apply_one(self, text: str, rng: random.Random, index: int) -> str | None:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, texts: list[str], indices: list[int] | None = None) -> list[str | None]:
        texts = list(texts)
        return self.apply(texts, list(range(len(texts))) if indices is None else list(indices))

    def describe(self) -> dict:
        return {"name": self.name, "type": type(self).__name__}
