"""Hard-negative mining: BM25, dense, hybrid, and the false-negative guards, on the built-in world."""

from __future__ import annotations

import json
import subprocess

import bm25s
import numpy as np
import pytest
import torch
from helpers import PYTHON, ROOT

from mmssl.data.world import world_columns
from mmssl.errors import DataError
from mmssl.mining.config import MiningConfig
from mmssl.mining.dense import top_k
from mmssl.mining.run import mine, normalise, write
from mmssl.recipes import WorldConfig
from mmssl.schema import from_dict

WORLD = {"source": "world", "world": {"num_scenes": 400, "pair_fraction": 0.5}}


def config(**raw) -> MiningConfig:
    return from_dict(MiningConfig, {"output": "unused.jsonl", "data": WORLD, "window": 100, **raw})


def false_negative_rate(result, meanings: dict[str, str]) -> float:
    """Share of mined negatives that say what the query says (true paraphrases: false negatives)."""
    rows = result.dataset
    k = sum(1 for c in rows.column_names if c.startswith("negative_") and c.count("_") == 1)
    query_meaning = {a: m for a, m in zip(*world_pairs()[:2])}
    bad = total = 0
    for row in rows:
        for n in range(1, k + 1):
            total += 1
            bad += meanings.get(row[f"negative_{n}"]) == query_meaning[row["anchor"]]
    return bad / total


def world_pairs():
    cols = world_columns(WorldConfig(num_scenes=400, pair_fraction=0.5), "pairs")
    return cols["anchor"], cols["meaning"], cols["positive"]


def positive_meanings() -> dict[str, str]:
    anchors, meanings, positives = world_pairs()
    return dict(zip(positives, meanings))


@pytest.mark.slow
def test_guards_remove_true_paraphrases_from_the_negatives():
    open_result = mine(config(num_negatives=3, guards={"exclude_duplicates": False, "max_relative_score": None}))
    guarded = mine(config(num_negatives=3))
    meanings = positive_meanings()
    before, after = false_negative_rate(open_result, meanings), false_negative_rate(guarded, meanings)
    assert before > 0.05, before  # unguarded BM25 picks paraphrases of the query as "negatives"
    assert after < before / 2, (before, after)
    stricter = false_negative_rate(mine(config(num_negatives=3, guards={"max_relative_score": 0.8})), meanings)
    assert stricter < after, (after, stricter)
    assert guarded.stats["counts"]["removed_duplicate_text"] > 0
    assert guarded.stats["counts"]["removed_relative_score"] > 0


@pytest.mark.slow
def test_rows_are_well_formed_and_respect_the_guards():
    result = mine(config(num_negatives=4, skip_top=1))
    assert result.dataset.column_names[:3] == ["anchor", "positive", "positive_score"]
    for row in result.dataset:
        negs = [row[f"negative_{n}"] for n in range(1, 5)]
        ranks = [row[f"negative_{n}_rank"] for n in range(1, 5)]
        assert ranks == sorted(ranks) and ranks[0] >= 2
        assert normalise(row["positive"]) not in {normalise(t) for t in negs}
        assert row["anchor"] not in negs
        for n in range(1, 5):
            assert row[f"negative_{n}_score"] <= 0.95 * row["positive_score"] + 1e-6


@pytest.mark.parametrize("settings", [{}, {"stemmer": "english", "method": "robertson"}, {"method": "bm25+"}],
                         ids=["lucene", "robertson-stemmed", "bm25plus"])
def test_streamed_bm25_index_equals_bm25s_index(settings):
    """The chunked index holds bm25s' own score matrix (term by term, same float32 values) and ranks the same."""
    import Stemmer

    from mmssl.mining.bm25 import BM25Index
    from mmssl.mining.config import BM25Config

    corpus = list(dict.fromkeys(world_columns(WorldConfig(num_scenes=300), "text")["text"])) + ["", "the of and"]
    queries = corpus[:50]
    ours = BM25Index(BM25Config(**settings))
    ours.build(iter(corpus), chunk_size=37)  # many chunks, each with its own local vocabulary
    stemmer = Stemmer.Stemmer("english") if settings.get("stemmer") else None
    ref = bm25s.BM25(method=settings.get("method", "lucene"))
    ref.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    mine, theirs = ours.retriever, ref
    assert mine.scores["num_docs"] == theirs.scores["num_docs"] == len(corpus)
    assert set(mine.vocab_dict) == set(theirs.vocab_dict)
    for token, term in theirs.vocab_dict.items():
        if token == "":
            continue
        a, b = mine.vocab_dict[token], term
        span = lambda s, t: slice(s["indptr"][t], s["indptr"][t + 1])  # noqa: E731
        assert np.array_equal(mine.scores["indices"][span(mine.scores, a)], theirs.scores["indices"][span(theirs.scores, b)])
        assert np.array_equal(mine.scores["data"][span(mine.scores, a)], theirs.scores["data"][span(theirs.scores, b)]), token
    ids, scores = ours.search(queries, 10)
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    ref_ids, ref_scores = ref.retrieve(tokens, k=10, show_progress=False)
    assert np.array_equal(scores, ref_scores) and np.array_equal(ids, ref_ids)


def test_chunked_exact_top_k_equals_brute_force():
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(301, 8)).astype(np.float32)
    ids, scores = top_k(q, c, 7, budget=2048)  # forces many query and corpus chunks
    full = q @ c.T
    ref = np.argsort(-full, axis=1)[:, :7]
    assert np.array_equal(ids, ref)
    assert np.allclose(scores, np.take_along_axis(full, ref, 1), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A small random sentence encoder saved as a sentence-transformers folder (no download)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel

    from mmssl.data.tokenizers import train_wordpiece

    root = tmp_path_factory.mktemp("encoder")
    tok = train_wordpiece([world_columns(WorldConfig(num_scenes=300), "text")["text"]], 300, 1, True)
    torch.manual_seed(0)  # a fixed random encoder: its similarities decide which guards fire
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    transformer = models.Transformer(str(root / "hf"), max_seq_length=32)
    SentenceTransformer(modules=[transformer, models.Pooling(32, "mean")]).save(str(root / "st"))
    return str(root / "st")


@pytest.mark.slow
def test_dense_and_hybrid_mining_with_an_embedding_cache(tmp_path, tiny_encoder):
    dense = {"model": tiny_encoder, "cache_dir": str(tmp_path / "cache")}
    first = mine(config(method="dense", num_negatives=2, dense=dense))
    assert first.stats["texts_encoded"] > 0
    second = mine(config(method="dense", num_negatives=2, dense=dense))
    assert second.stats["texts_encoded"] == 0  # every embedding came from the cache
    assert first.dataset.to_dict() == second.dataset.to_dict()
    hybrid = mine(config(method="hybrid", num_negatives=2, dense=dense, guards={"max_relative_score": None}))
    assert hybrid.stats["rows_written"] > 0
    for row in hybrid.dataset:
        assert row["negative_1_rank"] < row["negative_2_rank"]


@pytest.mark.slow
def test_bad_inputs(tmp_path):
    empty = tmp_path / "pairs.jsonl"
    empty.write_text(json.dumps({"anchor": " ", "positive": "x"}) + "\n")
    with pytest.raises(DataError, match="no \\(anchor, positive\\) pairs with both sides non-empty"):
        mine(config(data={"source": "files", "path": str(empty)}))
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(json.dumps({"anchor": f"q {i}", "positive": f"p {i}"}) for i in range(3)))
    with pytest.raises(DataError, match="5 negatives asked but the corpus has only 2 other documents"):
        mine(config(data={"source": "files", "path": str(few)}, num_negatives=5, window=10))
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join([json.dumps({"anchor": "a red circle", "positive": "the circle is red"})] * 3
                             + [json.dumps({"anchor": f"blue square {i}", "positive": f"square blue {i}"}) for i in range(6)]))
    result = mine(config(data={"source": "files", "path": str(dup)}, num_negatives=1, window=5,
                         guards={"max_relative_score": None}))
    assert result.stats["counts"]["skipped_duplicate_pairs"] == 2


@pytest.mark.slow
def test_cli_writes_rows_and_stats(tmp_path):
    out = tmp_path / "mined.parquet"
    done = subprocess.run([PYTHON, "-m", "mmssl", "mine", str(ROOT / "configs/mine_world_bm25.yaml"),
                           f"output={out}", "data.world.num_scenes=200"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    import datasets

    rows = datasets.Dataset.from_parquet(str(out))
    assert len(rows) > 0 and "negative_3" in rows.column_names
    stats = json.loads((tmp_path / "mined.parquet.stats.json").read_text())
    assert stats["rows_written"] == len(rows)
    bad = subprocess.run([PYTHON, "-m", "mmssl", "mine", str(ROOT / "configs/mine_world_bm25.yaml"),
                          "num_negatives=0"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "num_negatives: 0 is out of range; it must be >= 1" in bad.stderr and "Traceback" not in bad.stderr


def test_corpus_streams_distinct_documents_from_its_table(tmp_path):
    """A corpus file is read in chunks and kept in Arrow: duplicates and empty rows dropped, positives
    not in it appended, ids found by text, documents fetched by id."""
    from mmssl.mining import corpus as corpus_module
    from mmssl.mining.corpus import Corpus
    from mmssl.recipes import DataConfig

    docs = ["doc a", "doc b", "", "doc a", "  ", "doc c", "doc b", "doc d"]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"body": d}) for d in docs))
    cfg = DataConfig(source="files", path=str(path), columns={"text": "body"})
    chunk, corpus_module.CHUNK = corpus_module.CHUNK, 3  # several chunks
    try:
        corpus = Corpus.load(cfg, positives=["doc c", "new positive", "new positive"])
    finally:
        corpus_module.CHUNK = chunk
    expected = ["doc a", "doc b", "doc c", "doc d", "new positive"]
    assert len(corpus) == 5 and list(corpus.iter_texts(chunk=2)) == expected
    assert corpus.texts([4, 0, 2, 2]) == ["new positive", "doc a", "doc c", "doc c"]
    assert corpus.ids_of(["doc d", "new positive", "missing"]).tolist() == [3, 4, -1]
