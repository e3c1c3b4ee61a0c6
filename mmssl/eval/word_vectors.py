"""Intrinsic evaluation of word vectors, computed as gensim's `KeyedVectors.evaluate_word_pairs` and
`evaluate_word_analogies` compute it (case-insensitive; pairs or questions with an unknown word are left out and
counted), so figures compare with gensim's directly:

* ``word_similarity_spearman``: Spearman correlation between the cosine of two words and human scores
  (wordsim353 / SimLex-999's tab-separated format, ``#`` comments);
* ``analogy_accuracy``: 3CosAdd (``b - a + c``, the question's words excluded) over the `analogy_vocab` most
  frequent words, on word2vec's ``questions-words.txt`` format;
* ``word_kind_accuracy``: for named kinds of words (the built-in world's colours and shapes), how often a word's
  nearest other listed word is of its own kind (the mean over kinds)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mmssl.data.world import COLOURS, SHAPES
from mmssl.errors import DataError
from mmssl.eval.embeddings import spearman

WORLD_WORD_KINDS = {"colour": [name for name, _ in COLOURS], "shape": list(SHAPES)}


def _lines(path: str, what: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"objective.{what} {path!r} is not a file: give the path of a {what} file")
    return file.read_text(encoding="utf-8", errors="replace").splitlines()


def similarity_spearman(vectors: torch.Tensor, index: dict[str, int], path: str) -> tuple[float, float]:
    """(Spearman correlation, fraction of pairs with an unknown word) on a word-pair similarity file."""
    unit = F.normalize(vectors, dim=-1)
    cosines, gold, total = [], [], 0
    for line in _lines(path, "similarity_pairs"):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 3:
            raise DataError(f"objective.similarity_pairs {path!r}: {line!r} is not 'word1<tab>word2<tab>score'")
        total += 1
        a, b = index.get(parts[0].lower()), index.get(parts[1].lower())
        if a is not None and b is not None:
            cosines.append(float(unit[a] @ unit[b]))
            gold.append(float(parts[2]))
    if len(gold) < 3:
        return float("nan"), 1.0 - len(gold) / max(total, 1)
    return spearman(cosines, gold), 1.0 - len(gold) / total


def analogy_accuracy(vectors: torch.Tensor, index: dict[str, int], path: str, restrict: int) -> tuple[float, int]:
    """(accuracy, questions answered) of 3CosAdd over the first `restrict` words (the most frequent)."""
    unit = F.normalize(vectors[:restrict], dim=-1)
    questions = []
    for line in _lines(path, "analogies"):
        if line.startswith(":") or not line.strip():
            continue
        words = [index.get(w.lower()) for w in line.split()[:4]]
        if len(words) == 4 and all(w is not None and w < restrict for w in words):
            questions.append(words)
    if not questions:
        return float("nan"), 0
    q = torch.tensor(questions)
    correct = 0
    for chunk in q.split(1024):
        target = F.normalize(unit[chunk[:, 1]] - unit[chunk[:, 0]] + unit[chunk[:, 2]], dim=-1)
        scores = target @ unit.T
        scores.scatter_(1, chunk[:, :3], float("-inf"))  # the question's own words are never the answer
        correct += int((scores.argmax(1) == chunk[:, 3]).sum())
    return correct / len(questions), len(questions)


def kind_accuracy(vectors: torch.Tensor, index: dict[str, int], kinds: dict[str, list[str]]) -> float:
    """Mean over kinds of how often a word's nearest other listed word (cosine) has its kind."""
    listed = [(index[w], kind) for kind, group in kinds.items() for w in group if w in index]
    if len({kind for _, kind in listed}) < 2:
        return float("nan")
    rows = torch.tensor([i for i, _ in listed])
    unit = F.normalize(vectors[rows], dim=-1)
    sims = unit @ unit.T
    sims.fill_diagonal_(float("-inf"))
    nearest = sims.argmax(1).tolist()
    hits: dict[str, list[bool]] = {}
    for i, (_, kind) in enumerate(listed):
        hits.setdefault(kind, []).append(listed[nearest[i]][1] == kind)
    return sum(sum(h) / len(h) for h in hits.values()) / len(hits)


def word_vector_metrics(vectors: torch.Tensor, vocabulary: list[str], similarity_pairs: str | None,
                        analogies: str | None, analogy_vocab: int,
                        kinds: dict[str, list[str]] | None) -> dict[str, float]:
    """The metrics that apply: similarity and analogies when their files are given, word kinds when named."""
    index: dict[str, int] = {}
    for i, word in enumerate(vocabulary):
        index.setdefault(word.lower(), i)  # the most frequent spelling wins
    result: dict[str, float] = {}
    if similarity_pairs:
        result["word_similarity_spearman"], result["word_similarity_oov"] = similarity_spearman(
            vectors, index, similarity_pairs)
    if analogies:
        accuracy, answered = analogy_accuracy(vectors, index, analogies, analogy_vocab)
        result.update(analogy_accuracy=accuracy, analogy_questions=float(answered))
    if kinds:
        result["word_kind_accuracy"] = kind_accuracy(vectors, index, kinds)
    return result
