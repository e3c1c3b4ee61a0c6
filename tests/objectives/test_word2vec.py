"""word2vec through the real trainer: vocabulary, a run whose words find their own kind, the two exports
(sentence-transformers and gensim load them, with the vectors trained), evaluation computed as gensim computes
it, streamed text, clear refusals, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clirun import assert_clear_error, mmssl_here, straight_and_resumed_here, write_recipe

from mmssl.data.words import WordVocab, word_tokenizer, words
from mmssl.errors import DataError
from mmssl.eval.word_vectors import word_vector_metrics
from mmssl.hub.cards import render_card
from mmssl.recipes import parse_recipe
from mmssl.train.loop import train

GENSIM_DATA = Path(__import__("gensim").__file__).parent / "test" / "test_data"


def recipe(out: Path, **objective) -> dict:
    return {"output_dir": str(out), "seed": 0, "data": {"source": "world", "world": {"num_scenes": 300}},
            "objective": {"name": "word2vec", "dim": 16, "window": 4, "min_count": 2, **objective},
            "train": {"batch_size": 64, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                      "learning_rate": 0.1, "max_grad_norm": None, "max_steps": 40, "log_every": 5,
                      "progress": False}}


def test_words_and_the_exported_tokenizer_split_alike():
    text = "Don't stop: the café's 3 CATS sat_down, twice!  Ünïcode words…"
    assert words(text) == ["don't", "stop", "the", "café's", "3", "cats", "sat_down", "twice", "ünïcode", "words"]
    vocab = WordVocab.count([text, text, "stop the cats"], min_count=1)
    assert vocab.words[:3] == ["stop", "the", "cats"] and vocab.counts[:3] == [3, 3, 3]  # ties: first seen first
    encoded = word_tokenizer(vocab).encode(text + " unseen")
    assert encoded.tokens == [*words(text), "[UNK]"] and encoded.ids[:2] == [vocab.index["don't"] + 1, 1]


def test_an_empty_or_one_word_corpus_is_refused_by_name():
    with pytest.raises(DataError, match="hold no words"):
        WordVocab.count(["", "  ", "!!"], min_count=1)
    with pytest.raises(DataError, match=r"only 1 distinct word.*min_count=1.*add text"):
        WordVocab.count(["hello hello", "hello"], min_count=1)


def test_evaluation_matches_gensim():
    from gensim.models import KeyedVectors

    g = torch.Generator().manual_seed(0)
    pairs = [line.split("\t")[:2] for line in (GENSIM_DATA / "wordsim353.tsv").read_text().splitlines()
             if not line.startswith("#")]
    vocabulary = list(dict.fromkeys(w.lower() for pair in pairs for w in pair))[:300] + ["athens", "greece",
                                                                                     "baghdad", "iraq"]
    vectors = torch.randn(len(vocabulary), 8, generator=g)
    vectors[-1] = vectors[-2] - vectors[-4] + vectors[-3]  # iraq = baghdad - athens + greece: one right answer
    kv = KeyedVectors(8)
    kv.add_vectors(vocabulary, vectors.numpy())
    mine = word_vector_metrics(vectors, vocabulary, str(GENSIM_DATA / "wordsim353.tsv"),
                               str(GENSIM_DATA / "questions-words.txt"), 300_000, None)
    (_, _), (rho, _), oov = kv.evaluate_word_pairs(str(GENSIM_DATA / "wordsim353.tsv"))
    score, _ = kv.evaluate_word_analogies(str(GENSIM_DATA / "questions-words.txt"))
    assert mine["word_similarity_spearman"] == pytest.approx(rho, abs=1e-6)
    assert mine["word_similarity_oov"] * 100 == pytest.approx(oov, abs=1e-6)
    assert mine["analogy_accuracy"] == pytest.approx(score, abs=1e-9) and mine["analogy_accuracy"] > 0


@pytest.mark.slow
def test_trains_and_exports_vectors_that_sentence_transformers_and_gensim_load(tmp_path):
    from gensim.models import KeyedVectors
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "run"
    metrics = train(parse_recipe(recipe(out)))
    result = metrics["eval"]
    # fixed seed: colour and shape words find their own kind far more often than the random vectors (0.46) do
    assert result["word_kind_accuracy"] >= result["random_init_word_kind_accuracy"] + 0.25, result
    logged = [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]
    assert logged[-1] < 0.8 * logged[0], logged
    kv = KeyedVectors.load_word2vec_format(str(out / "word2vec.txt"))
    model = SentenceTransformer(str(out), device="cpu")
    red, blue, circle = model.encode(["red", "blue", "circle"], convert_to_tensor=True)
    assert torch.allclose(red, torch.tensor(kv["red"]), atol=1e-5)  # one vector, two tools
    assert float(torch.cosine_similarity(red, blue, 0)) > float(torch.cosine_similarity(red, circle, 0))
    sentence = model.encode("A red circle, ZZZ!", convert_to_tensor=True)
    words_mean = torch.tensor(np.stack([kv[w] for w in ("a", "red", "circle")]).mean(0))
    assert torch.allclose(torch.nn.functional.normalize(sentence, dim=0),
                          torch.nn.functional.normalize(words_mean, dim=0), atol=1e-5)  # unknown words add nothing
    evaluated = json.loads(mmssl_here("eval", str(out)).stdout)  # `mmssl eval DIR` reads word2vec.txt back
    assert evaluated["word_kind_accuracy"] == pytest.approx(result["word_kind_accuracy"])
    card = render_card(out, "someone/world-vectors")
    assert "KeyedVectors.load_word2vec_format" in card and "skipgram with negative sampling, 16 dimensions" in card


@pytest.mark.slow
def test_cbow_on_streamed_text_files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    from mmssl.data.world import world_columns
    from mmssl.recipes import WorldConfig

    corpus.write_text("\n".join(world_columns(WorldConfig(num_scenes=300), "text")["text"]) + "\n")
    raw = recipe(tmp_path / "run", architecture="cbow", negative_sharing="batch", noise_words=64)
    raw["data"] = {"source": "files", "path": str(corpus), "streaming": True}
    metrics = train(parse_recipe(raw))
    assert metrics["streamed"] is True and metrics["vocab_size"] > 20
    logged = [e["loss"] for e in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    assert logged[-1] < 0.8 * logged[0], logged


def test_a_corpus_without_vocabulary_gets_one_message(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text("hello\nhello hello\n")
    raw = recipe(tmp_path / "run")
    raw["data"] = {"source": "files", "path": str(corpus)}
    done = mmssl_here("train", str(write_recipe(tmp_path / "r.yaml", raw)))
    assert_clear_error(done, "only 1 distinct word", "objective.min_count")
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_vectors(tmp_path):
    raw = recipe(tmp_path / "unused")
    raw["train"].update(max_steps=16, save_every=4, keep_checkpoints=10, batch_size=32)
    a, b, _ = straight_and_resumed_here(raw, tmp_path, 8, 16)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
