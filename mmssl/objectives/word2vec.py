"""word2vec (Mikolov et al. 2013): skip-gram or CBOW with negative sampling and frequent-word subsampling.

Text is split into words (`mmssl.data.words`), counted once into a vocabulary (``min_count``, ``max_vocab``;
saved with checkpoints so a resume trains the same words), and read as sentences, whole or streamed; a batch
lays ``train.batch_size`` sentences end to end. Subsampling, the dynamic windows and the noise words are drawn
in the step from torch's generator (restored on resume). The loss (`mmssl.losses.word2vec`) is summed over
pairs, so plain SGD with ``learning_rate: 0.025`` and a linear decay is word2vec's own schedule.

Export: a sentence-transformers folder holding a `StaticEmbedding` module (its tokenizer splits words exactly as
training did; a sentence is the mean of its word vectors) plus ``word2vec.txt``, the word2vec text format that
``gensim.models.KeyedVectors.load_word2vec_format`` reads. Evaluation: Spearman correlation with human
similarity scores (``similarity_pairs``: wordsim353's tab-separated format), analogy accuracy
(``analogies``: word2vec's questions-words format) and, on the built-in world, whether a colour or shape word's
nearest word is of its own kind; each against the random initial vectors."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from mmssl.config import ObjectiveParams
from mmssl.data.sources import eval_splits, load_splits
from mmssl.data.records import record_text
from mmssl.data.stream_sources import data_sources, data_stream, raw_records, wants_streaming
from mmssl.data.streaming import Problem, Skip, Transform
from mmssl.data.words import WordVocab, word_tokenizer, words
from mmssl.errors import DataError, MmsslError
from mmssl.eval.word_vectors import WORLD_WORD_KINDS, word_vector_metrics
from mmssl.losses.word2vec import keep_probabilities, noise_distribution, word2vec_loss
from mmssl.objectives.base import ModelOutput, Objective
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, PositiveInt, Range

log = logging.getLogger(__name__)

VOCAB_FILE = "word2vec_vocab.json"
VECTORS_FILE = "word2vec.txt"
MISSING_ST = "word2vec exports a sentence-transformers model: pip install 'mmssl[text]'"
MAX_SENTENCE_WORDS = 10_000  # longer texts are cut into pieces of this many words (word2vec.c's MAX_SENTENCE_LENGTH)


@dataclass
class Word2VecParams(ObjectiveParams):
    architecture: Literal["skipgram", "cbow"] = "skipgram"
    dim: PositiveInt = 100
    window: Annotated[int, Range(1, 50)] = 5  # the largest distance; each word's window is drawn from 1..window
    negatives: Annotated[int, Range(1, 100)] = 5  # noise words per positive pair
    noise_power: NonNegativeFloat = 0.75  # noise words are drawn from unigram counts ** noise_power
    # "token": each word draws its own noise words (word2vec's estimate); "batch": one draw of `noise_words`
    # words per batch scored with a matrix product (the same expected gradient, but measured much noisier:
    # wordsim353 0.38 against 0.60 after 5 epochs; see docs/benchmarks.md)
    negative_sharing: Literal["token", "batch"] = "token"
    noise_words: PositiveInt = 1024
    sample: NonNegativeFloat = 1e-3  # subsampling of frequent words (0: off)
    min_count: PositiveInt = 5
    max_vocab: PositiveInt | None = None
    lowercase: bool = True
    # evaluation files (optional): word1 <tab> word2 <tab> score (wordsim353) and questions-words analogies
    similarity_pairs: str | None = None
    analogies: str | None = None
    analogy_vocab: PositiveInt = 300_000  # analogy answers are searched among the most frequent words (gensim's)


class Word2VecModule(nn.Module):
    """The two embedding tables: `input_vectors` (the word vectors exported) and `output_vectors`."""

    def __init__(self, vocab_size: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        # word2vec.c's initialisation: input vectors uniform in +-0.5/dim, output vectors zero
        self.input_vectors = nn.Parameter((torch.rand(vocab_size, dim, generator=generator) - 0.5) / dim)
        self.output_vectors = nn.Parameter(torch.zeros(vocab_size, dim))


class SentenceIds(Transform):
    """One text record -> its words' vocabulary ids, in pieces of at most MAX_SENTENCE_WORDS (loader workers)."""

    def __init__(self, vocab: WordVocab, column: str, lowercase: bool):
        self.vocab, self.column, self.lowercase = vocab, column, lowercase

    def __call__(self, record: dict[str, Any]) -> list[Any]:
        text = record_text(record, self.column)
        if text is None:
            raise Skip(f"no text column {self.column!r}" if record.get(self.column) is None
                       else f"{self.column!r} is not text")
        ids = self.vocab.ids(words(text, self.lowercase))
        return [{"ids": ids[i:i + MAX_SENTENCE_WORDS]} for i in range(0, len(ids), MAX_SENTENCE_WORDS)]


@register_objective("word2vec")
class Word2Vec(Objective):
    Params = Word2VecParams
    output = ModelOutput("word_vectors", "sentence-transformers", "sentence-similarity", "word_vectors.md",
                         "sentence-similarity")
    throughput_unit = "tokens"

    def setup(self) -> None:
        recipe, p = self.recipe, self.params
        column = recipe.data.columns.get("text", "text")
        streaming = wants_streaming(recipe.data)
        if streaming:
            sources = data_sources(recipe.data, "text")
            splits = eval_splits(recipe.data, "text", ["text"], recipe.seed)

            def texts():  # the vocabulary is counted on the texts the training stream reads
                for record in raw_records(sources):
                    text = None if isinstance(record, Problem) else record_text(record, column)
                    if text is not None:
                        yield text
        else:
            # every sentence trains: word2vec's evaluation needs no held-out text (data.eval_path still works)
            splits = load_splits(replace(recipe.data, eval_fraction=0.0), "text", ["text"], seed=recipe.seed)
            texts = lambda: (t for t in splits.train["text"] if isinstance(t, str))  # noqa: E731
        saved = self.context.resume_dir / VOCAB_FILE if self.context.resume_dir else None
        if saved is not None and saved.is_file():
            self.vocab = WordVocab.load(saved)
        else:
            self.vocab = WordVocab.count(texts(), p.min_count, p.max_vocab, p.lowercase)
        counts = torch.tensor(self.vocab.counts)
        self.keep = keep_probabilities(counts, p.sample)
        self.noise = noise_distribution(counts, p.noise_power)
        transform = SentenceIds(self.vocab, "text" if not streaming else column, p.lowercase)
        if streaming:
            self.train_stream = data_stream(recipe.data, sources, transform, recipe.seed)
        else:
            self.train_dataset = splits.train.select_columns(["text"])
        self._transform = transform
        self.eval_dataset = splits.eval
        if importlib.util.find_spec("sentence_transformers") is None:  # refused before training, not at export
            raise MmsslError(MISSING_ST)
        generator = torch.Generator().manual_seed(recipe.seed)
        self.module = Word2VecModule(len(self.vocab), p.dim, generator)
        self._floor = self._word_metrics(self.module.input_vectors.detach())

    # -- data --------------------------------------------------------------------------------------------
    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        pieces = [row["ids"] for row in rows] if rows and "ids" in rows[0] else \
            [piece["ids"] for row in rows for piece in self._transform({"text": row["text"]})]
        ids = torch.tensor([i for piece in pieces for i in piece], dtype=torch.long)
        sentence = torch.repeat_interleave(torch.arange(len(pieces)), torch.tensor([len(x) for x in pieces],
                                                                                   dtype=torch.long))
        return {"ids": ids, "sentence": sentence, "num_sentences": len(pieces)}

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Subsample frequent words, draw each word's window and the noise words (torch's generator)."""
        p, ids = self.params, batch["ids"]
        if self.keep.device != ids.device:  # moved once, not copied to the device every step
            self.keep, self.noise = self.keep.to(ids.device), self.noise.to(ids.device)
        kept = torch.rand(ids.shape, device=ids.device) < self.keep[ids]
        ids, sentence = ids[kept], batch["sentence"][kept]
        reduced = torch.randint(1, p.window + 1, ids.shape, device=ids.device)
        shape = (ids.numel(), p.negatives) if p.negative_sharing == "token" else (p.noise_words,)
        noise = torch.multinomial(self.noise, math.prod(shape) or 1, replacement=True)
        return {"ids": ids, "sentence": sentence, "reduced": reduced, "noise": noise[:math.prod(shape)].view(shape),
                "num_sentences": batch["num_sentences"], "num_words": int(batch["ids"].numel())}

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        return batch["num_sentences"], batch.get("num_words", int(batch["ids"].numel()))

    # -- step ------------------------------------------------------------------------------------------------
    def sparse_gradients(self) -> bool:
        """Plain SGD on one process updates only the rows a batch touched (sparse gradients): word2vec's own
        update, at a cost that does not grow with the vocabulary. AdamW, momentum, weight decay and DDP get
        dense gradients."""
        t = self.recipe.train
        return t.optimizer == "sgd" and t.momentum == 0 and t.weight_decay == 0 and self.context.world_size == 1

    def training_step(self, module: nn.Module, batch: dict[str, Any], backward) -> dict[str, torch.Tensor]:
        core, p = self.core(module), self.params
        if not getattr(self, "_warned", False) and self.recipe.train.optimizer == "sgd":
            self._warned = True
            if batch["num_words"] > 3000:
                log.warning("word2vec: %d words in the first step; plain SGD on a summed loss diverges with more "
                            "than a few thousand words per step (measured: 2,000 trains, 4,000 collapses): lower "
                            "train.batch_size (sentences per step)", batch["num_words"])
        total, pairs = word2vec_loss(core.input_vectors, core.output_vectors, batch["ids"], batch["sentence"],
                                     batch["reduced"], batch["noise"], p.window, p.negatives, p.architecture,
                                     self.sparse_gradients())
        backward(total)  # summed over pairs: each pair is one of word2vec's updates
        return {"loss": (total / pairs.clamp(min=1)).detach(), "pairs": pairs.detach().float()}

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "weight_decay": 0.0}]

    # -- evaluation and export -------------------------------------------------------------------------------
    def has_evaluation(self) -> bool:
        return True

    def _word_metrics(self, vectors: torch.Tensor) -> dict[str, float]:
        p = self.params
        kinds = WORLD_WORD_KINDS if self.recipe.data.source == "world" else None
        return word_vector_metrics(vectors, self.vocab.words, p.similarity_pairs, p.analogies, p.analogy_vocab,
                                   kinds)

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        result = self._word_metrics(self.core(module).input_vectors.detach().float().cpu())
        return {**result, **{f"random_init_{k}": v for k, v in self._floor.items()}, "vocab_size": len(self.vocab)}

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        vocab, vectors = read_word2vec_text(directory / VECTORS_FILE)
        self.vocab = vocab
        return self._word_metrics(vectors)

    def save_artifacts(self, directory: Path) -> None:
        self.vocab.save(directory / VOCAB_FILE)

    def export(self, module: nn.Module, directory: Path) -> None:
        SentenceTransformer, StaticEmbedding = _sentence_transformers()
        vectors = self.core(module).input_vectors.detach().float().cpu()
        # row 0 of the static embedding is [UNK]: zero, so unknown words do not move a sentence's direction
        table = torch.cat([torch.zeros(1, vectors.shape[1]), vectors])
        static = StaticEmbedding(word_tokenizer(self.vocab, self.params.lowercase), embedding_weights=table)
        SentenceTransformer(modules=[static], device="cpu").save(str(directory))
        write_word2vec_text(directory / VECTORS_FILE, self.vocab.words, vectors)
        self.vocab.save(directory / VOCAB_FILE)

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {"vocab_size": len(self.vocab), "corpus_words": sum(self.vocab.counts), "dim": p.dim,
                "architecture": p.architecture, "streamed": self.train_stream is not None}


def _sentence_transformers():  # noqa: ANN202 - (SentenceTransformer, StaticEmbedding)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MmsslError(MISSING_ST) from None
    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # 5.x
        from sentence_transformers.models import StaticEmbedding  # type: ignore[no-redef]
    return SentenceTransformer, StaticEmbedding


def write_word2vec_text(path: Path, vocabulary: list[str], vectors: torch.Tensor) -> None:
    """The word2vec text format: a ``count dim`` header, then one ``word v1 ... vD`` line per word; written to
    a temporary file and renamed, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(f"{len(vocabulary)} {vectors.shape[1]}\n")
        for word, row in zip(vocabulary, vectors.tolist()):
            out.write(word + " " + " ".join(f"{v:.6g}" for v in row) + "\n")
    os.replace(tmp, path)


def read_word2vec_text(path: Path) -> tuple[WordVocab, torch.Tensor]:
    """Words and vectors of a word2vec text file (counts are not in the format: the order is kept)."""
    if not path.is_file():
        raise DataError(f"{path} not found: `mmssl eval` needs a folder exported by the word2vec objective")
    with open(path, encoding="utf-8") as lines:
        count, dim = map(int, next(lines).split())
        vocabulary, rows = [], []
        for line in lines:
            parts = line.rstrip("\n").split(" ")
            vocabulary.append(parts[0])
            rows.append([float(v) for v in parts[1:dim + 1]])
    if len(vocabulary) != count:
        raise DataError(f"{path} announces {count} words but holds {len(vocabulary)}: the file is truncated")
    return WordVocab(vocabulary, list(range(count, 0, -1))), torch.tensor(rows)

