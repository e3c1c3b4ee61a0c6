"""A small, dependency-free reader of the WordNet 3.0 database files (Debian `wordnet-base`).

Why not nlpaug's `SynonymAug(aug_src="wordnet")`: it needs nltk (not an nlpaug dependency), WordNet files
copied into nltk's layout plus a `lexnames` file Debian lacks, and nltk's part-of-speech tagger, whose
data ships in no package (see the team's ENV.md). WordNet's own file format is simple: `index.<pos>`
maps a lemma to synset byte offsets in `data.<pos>`, whose lines list the synset's words. This module
reads exactly that, plus WordNet's morphology (exception lists `<pos>.exc` and the suffix rules of
`morphy(7WN)`), so synonyms work offline with nothing but the Debian files.

Part of speech: without a tagger, a word's part of speech is taken to be the one whose senses were seen
most often in the SemCor corpus (the `tagsense_cnt` field of the index), ties broken noun > verb > adj >
adv. That is crude but cheap and deterministic; callers can pass ``pos`` explicitly.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mmssl.errors import MmsslError

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SEARCH_DIRS = ("/usr/share/wordnet", "/usr/share/wordnet/dict", "/usr/local/WordNet-3.0/dict",
               "/usr/local/share/wordnet", "/opt/homebrew/share/wordnet")
# morphy(7WN) detachment rules
_RULES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
          ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}


class WordNetMissing(MmsslError):
    """The WordNet database files are not installed."""


def find_wordnet_dir(directory: str | os.PathLike | None = None) -> Path:
    """The folder holding `index.noun`/`data.noun`: `directory`, $WNSEARCHDIR, $WNHOME/dict, or a system path."""
    candidates: list[str] = []
    if directory:
        candidates.append(str(directory))
    if os.environ.get("WNSEARCHDIR"):
        candidates.append(os.environ["WNSEARCHDIR"])
    if os.environ.get("WNHOME"):
        candidates += [os.environ["WNHOME"], os.path.join(os.environ["WNHOME"], "dict")]
    if not directory:
        candidates += SEARCH_DIRS
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if (path / "index.noun").is_file() and (path / "data.noun").is_file():
            return path
    looked = ", ".join(candidates)
    raise WordNetMissing(
        f"WordNet database files (index.noun, data.noun, ...) not found in {looked}; install them with "
        "`apt-get install wordnet-base` (Debian/Ubuntu) or point WNSEARCHDIR (or the view's wordnet_dir) at a "
        "WordNet 3.0 'dict' folder"
    )


class WordNet:
    """Synonyms of English words from the WordNet files; thread-safe, files read lazily and cached."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = find_wordnet_dir(directory)
        self._index: dict[str, dict[str, tuple[int, list[int]]]] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        self._data: dict[str, bytes] = {}
        self._synsets: dict[tuple[str, int], list[str]] = {}
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------------
    def _load(self, pos: str) -> None:
        with self._lock:
            if pos in self._index:
                return
            name = POS_FILES[pos]
            index: dict[str, tuple[int, list[int]]] = {}
            with open(self.directory / f"index.{name}", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if line.startswith(" "):  # licence header
                        continue
                    fields = line.split()
                    if len(fields) < 6:
                        continue
                    synset_cnt, p_cnt = int(fields[2]), int(fields[3])
                    tagsense_cnt = int(fields[5 + p_cnt])
                    offsets = [int(o) for o in fields[-synset_cnt:]]
                    index[fields[0]] = (tagsense_cnt, offsets)
            exceptions: dict[str, list[str]] = {}
            exc = self.directory / f"{name}.exc"
            if exc.is_file():
                for line in exc.read_text(encoding="utf-8", errors="replace").splitlines():
                    fields = line.split()
                    if len(fields) >= 2:
                        exceptions[fields[0]] = fields[1:]
            self._data[pos] = (self.directory / f"data.{name}").read_bytes()
            self._exceptions[pos] = exceptions
            self._index[pos] = index

    def _synset_words(self, pos: str, offset: int) -> list[str]:
        key = (pos, offset)
        words = self._synsets.get(key)
        if words is None:
            data = self._data[pos]
            end = data.find(b"\n", offset)
            fields = data[offset:end].decode("utf-8", errors="replace").split()
            count = int(fields[3], 16)
            words = []
            for i in range(count):
                word = fields[4 + 2 * i]
                if word.endswith(")") and "(" in word:  # adjective markers: big(a), galore(ip)
                    word = word[: word.index("(")]
                words.append(word.replace("_", " "))
            self._synsets[key] = words
        return words

    # -- lookup --------------------------------------------------------------------------------
    def lemmas(self, word: str, pos: str) -> list[str]:
        """Base forms of `word` as part of speech `pos` that are in WordNet (morphy)."""
        self._load(pos)
        word = word.lower().replace(" ", "_")
        index = self._index[pos]
        found = [word] if word in index else []
        for base in self._exceptions[pos].get(word, []):
            if base in index and base not in found:
                found.append(base)
        if not found:
            for suffix, ending in _RULES[pos]:
                if word.endswith(suffix) and len(word) > len(suffix):
                    base = word[: len(word) - len(suffix)] + ending
                    if base in index and base not in found:
                        found.append(base)
        return found

    def best_pos(self, word: str) -> str | None:
        """The part of speech with the most SemCor-tagged senses of `word` (None if not in WordNet)."""
        best, best_count = None, -1
        for pos in POS_FILES:
            for lemma in self.lemmas(word, pos):
                count = self._index[pos][lemma][0]
                if count > best_count:
                    best, best_count = pos, count
        return best

    def synonyms(self, word: str, pos: str | None = None, max_senses: int | None = 3) -> list[str]:
        """Synonyms of `word` (most frequent senses first; the word itself excluded), lower-case lemmas.

        `pos`: 'n', 'v', 'a', 'r', or None for the most frequent part of speech of the word.
        `max_senses`: look only at the first senses (WordNet orders them by frequency) to stay on-meaning.
        """
        pos = pos or self.best_pos(word)
        if pos is None:
            return []
        seen: dict[str, None] = {}
        lemmas = self.lemmas(word, pos)
        exclude = {word.lower(), *[l.replace("_", " ") for l in lemmas]}
        for lemma in lemmas:
            offsets = self._index[pos][lemma][1]
            for offset in offsets[:max_senses] if max_senses else offsets:
                for synonym in self._synset_words(pos, offset):
                    if synonym.lower() not in exclude:
                        seen.setdefault(synonym, None)
        return list(seen)


_SHARED: dict[str, WordNet] = {}


def get_wordnet(directory: str | os.PathLike | None = None) -> WordNet:
    """A process-wide WordNet reader per folder (files are read once)."""
    path = str(find_wordnet_dir(directory))
    if path not in _SHARED:
        _SHARED[path] = WordNet(path)
    return _SHARED[path]
