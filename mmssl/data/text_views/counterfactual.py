"""Counterfactual data augmentation (CDA; Lu et al. 2018, "Gender Bias in Neural Natural Language Processing";
Zhao et al. 2018): a text's view swaps every term of one group with its counterpart, in both directions ("he
found his mother" -> "she found her father"), so a model trained on text and view together sees each context
with both groups.

Word lists (``word_pairs``): a built-in name or a file of ``word,counterpart`` lines (``#`` comments and blank lines
skipped). Every pair works both ways. Built in:

* ``gender``: pronouns, kinship, titles, roles (he/she, man/woman, king/queen, actor/actress, ...; 70+ pairs);
* ``religion``: two groups, Christian and Muslim terms (christian/muslim, church/mosque, bible/quran, priest/imam,
  ...; after the religion terms of Liang et al. 2020, "Towards Debiasing Sentence Representations").

Matching is on whole words (letters only, so "king's" and "father-in-law" swap their word part), case-insensitive,
and keeps the original's case (He -> She, HIS -> HER) and every other character as it was. English "her" is both
object and possessive (him / his) and "his" both determiner and pronoun (her / hers): the next word decides (a
word that can start a noun phrase after it makes it a determiner; the end of a clause, punctuation or a function
word makes it a pronoun). This is a heuristic: "I saw her run" becomes "I saw his run".

The view is deterministic (no randomness: a pure function of the text) and returns None for a text without any
listed term, so an objective falls back to its other view (dropout in SimCSE)."""

from __future__ import annotations

import random
import re
from pathlib import Path

from mmssl.data.text_views.base import View, match_case
from mmssl.errors import DataError

# (word, counterpart) pairs; the reverse direction is derived. Where a word is the counterpart of several words
# (her: him / his), the ambiguity is resolved in `CounterfactualSwap` (see the module docstring).
GENDER_PAIRS: tuple[tuple[str, str], ...] = (
    ("he", "she"), ("him", "her"), ("his", "her"), ("himself", "herself"), ("his", "hers"),
    ("man", "woman"), ("men", "women"), ("boy", "girl"), ("boys", "girls"), ("male", "female"),
    ("males", "females"), ("masculine", "feminine"), ("father", "mother"), ("fathers", "mothers"),
    ("son", "daughter"), ("sons", "daughters"), ("brother", "sister"), ("brothers", "sisters"),
    ("uncle", "aunt"), ("uncles", "aunts"), ("nephew", "niece"), ("nephews", "nieces"),
    ("husband", "wife"), ("husbands", "wives"), ("king", "queen"), ("kings", "queens"),
    ("prince", "princess"), ("princes", "princesses"), ("gentleman", "lady"), ("gentlemen", "ladies"),
    ("mr", "mrs"), ("sir", "madam"), ("grandfather", "grandmother"), ("grandfathers", "grandmothers"),
    ("grandson", "granddaughter"), ("grandsons", "granddaughters"), ("grandpa", "grandma"), ("dad", "mom"),
    ("dads", "moms"), ("daddy", "mommy"), ("papa", "mama"), ("stepfather", "stepmother"), ("stepson", "stepdaughter"),
    ("godfather", "godmother"), ("boyfriend", "girlfriend"), ("boyfriends", "girlfriends"), ("groom", "bride"),
    ("bridegroom", "bride"), ("fiance", "fiancee"), ("widower", "widow"), ("actor", "actress"),
    ("actors", "actresses"), ("waiter", "waitress"), ("waiters", "waitresses"),
    ("steward", "stewardess"), ("hero", "heroine"), ("heroes", "heroines"), ("emperor", "empress"),
    ("duke", "duchess"), ("baron", "baroness"), ("heir", "heiress"), ("monk", "nun"), ("monks", "nuns"),
    ("headmaster", "headmistress"), ("schoolboy", "schoolgirl"), ("landlord", "landlady"),
    ("spokesman", "spokeswoman"), ("chairman", "chairwoman"), ("businessman", "businesswoman"),
    ("businessmen", "businesswomen"), ("policeman", "policewoman"), ("congressman", "congresswoman"),
    ("sportsman", "sportswoman"), ("boyhood", "girlhood"), ("manhood", "womanhood"), ("patriarch", "matriarch"),
    ("fraternity", "sorority"), ("brotherhood", "sisterhood"), ("lad", "lass"), ("lads", "lasses"),
    ("sorcerer", "sorceress"), ("wizard", "witch"),
)
RELIGION_PAIRS: tuple[tuple[str, str], ...] = (
    ("christian", "muslim"), ("christians", "muslims"), ("christianity", "islam"), ("church", "mosque"),
    ("churches", "mosques"), ("bible", "quran"), ("priest", "imam"), ("priests", "imams"),
    ("pastor", "mullah"), ("christmas", "eid"), ("easter", "ramadan"), ("jesus", "muhammad"),
)
BUILTIN = {"gender": GENDER_PAIRS, "religion": RELIGION_PAIRS}

_WORD = re.compile(r"[^\W\d_]+")
# after "her"/"his": these (or punctuation / the end of the text) make it a pronoun (him, hers), anything else a
# determiner (his, her)
_NOT_A_NOUN_PHRASE = frozenset("""
a an the this that these those and or but nor so yet for to of in on at by with from into onto about over under
after before than as if when while because though although until since whether up down out off away back home
again now then there here too also very really just once twice today tomorrow yesterday tonight later soon ago
is are was were be been being am do does did has have had will would can could shall should may might must not
i me you he him she her it we us they them who whom which what where why how all both each
""".split())


def read_pairs(source: str) -> tuple[tuple[str, str], ...]:
    """A built-in list by name, or the ``word,counterpart`` lines of a file (lower-cased; one clear DataError for a
    missing file or a malformed line)."""
    if source in BUILTIN:
        return BUILTIN[source]
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"word_pairs {source!r} is neither a built-in list ({', '.join(BUILTIN)}) nor a file of "
                        "'word,counterpart' lines")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip().lower() for p in line.split(",")]
        if len(parts) != 2 or not all(_WORD.fullmatch(p) for p in parts) or parts[0] == parts[1]:
            raise DataError(f"{str(path)!r} line {number}: {line!r} is not 'word,counterpart' (two different single "
                            "words, letters only)")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise DataError(f"{str(path)!r} holds no 'word,counterpart' lines")
    return tuple(pairs)


def swap_table(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """word -> counterpart, both directions; a listed direction wins over a derived one, the first listed over later
    ones (so "lady" -> "gentleman", not a later pair's partner)."""
    table: dict[str, str] = {}
    for word, other in pairs:
        table.setdefault(word, other)
    for word, other in pairs:
        table.setdefault(other, word)
    return table


class CounterfactualSwap(View):
    """Swap every listed term with its counterpart (both directions), keeping case and everything else."""

    def __init__(self, name: str = "counterfactual", seed: int = 0, word_pairs: str = "gender") -> None:
        self.name, self.seed, self.word_pairs = name, seed, word_pairs
        self.pairs = read_pairs(word_pairs)
        self.table = swap_table(self.pairs)
        listed = {w for pair in self.pairs for w in pair}
        # English pronoun ambiguity, only where the list has these pairs
        self.her = ("him", "his") if {"him", "his", "her"} <= listed else None
        self.his = ("her", "hers") if {"his", "her", "hers"} <= listed else None

    def swap(self, text: str) -> str:
        matches = list(_WORD.finditer(text))
        out, last = [], 0
        for i, m in enumerate(matches):
            word = m.group()
            lower = word.lower()
            new = self.table.get(lower)
            if new is None:
                continue
            if lower in ("her", "his") and (self.her if lower == "her" else self.his):
                pronoun, determiner = (self.her[0], self.her[1]) if lower == "her" else (self.his[1], self.his[0])
                follower = matches[i + 1] if i + 1 < len(matches) else None
                between = text[m.end():follower.start()] if follower else ""
                determines = (follower is not None and not between.strip()
                              and follower.group().lower() not in _NOT_A_NOUN_PHRASE)
                new = determiner if determines else pronoun
            out.append(text[last:m.start()])
            out.append(match_case(new, word))
            last = m.end()
        out.append(text[last:])
        return "".join(out)

    def apply_one(self, text: str, rng: random.Random, index: int) -> str | None:
        swapped = self.swap(text)
        return swapped if swapped != text else None

    def describe(self) -> dict:
        return {"name": self.name, "type": type(self).__name__, "word_pairs": self.word_pairs,
                "pairs": len(self.pairs)}


def build_counterfactual_view(cfg, name: str | None = None, seed: int = 0) -> CounterfactualSwap:
    """The view of a ``{type: counterfactual, word_pairs: gender | religion | FILE}`` config entry."""
    return CounterfactualSwap(name=name or cfg.label, seed=seed, word_pairs=cfg.word_pairs)
