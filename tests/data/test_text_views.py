"""Lexical text views: every op really edits, results are a function of (seed, index, text) only,
WordNet synonyms work offline from the Debian files, quality filters drop what they say."""

from __future__ import annotations

import pytest

from mmssl.data.text_views import TextViews, ViewConfig, build_views, normalise
from mmssl.data.text_views.base import STOPWORDS
from mmssl.data.text_views.quality import QualityFilter, count_reasons
from mmssl.data.text_views.wordnet import WordNetMissing, find_wordnet_dir, get_wordnet
from mmssl.errors import MmsslError, RecipeError
from mmssl.schema import from_dict

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A small red circle is above a large blue square.",
    "Children were playing happily in the green garden after school.",
    "She quickly wrote a long letter to her old friend.",
]
OPS = ["synonym", "insert", "swap", "delete", "crop", "keyboard", "spelling", "ocr", "char_insert",
       "char_substitute", "char_swap", "char_delete"]


def view(op: str, seed: int = 0, **kw):
    (built,) = build_views(from_dict(ViewConfig, {"type": op, "p": 0.25, **kw}), seed=seed)
    return built


def test_wordnet_is_installed():
    """Not skipped: CI installs it (`apt-get install -y wordnet-base wordnet-sense-index`, see .ci/run)."""
    find_wordnet_dir()  # raises WordNetMissing naming `apt-get install wordnet-base`


@pytest.mark.parametrize("op", OPS)
def test_each_op_edits_and_is_deterministic(op):
    v = view(op, seed=3)
    out = v(SENTENCES)
    assert all(isinstance(o, str) for o in out), out
    assert all(normalise(o) != normalise(s) for o, s in zip(out, SENTENCES)), out  # really edits every sentence
    assert v(SENTENCES) == out  # same seed, same views
    # a function of (seed, index, text): order and batch composition do not matter
    assert v(SENTENCES[::-1], indices=[3, 2, 1, 0]) == out[::-1]
    assert v(SENTENCES[2:], indices=[2, 3]) == out[2:]
    # global RNGs are left alone (nlpaug uses them) ...
    import random

    import numpy as np

    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    v(SENTENCES)
    assert (random.random(), np.random.rand()) == before
    # ... and another seed gives other views
    assert view(op, seed=4)(SENTENCES) != out


def test_wordnet_synonyms_offline():
    wn = get_wordnet()
    assert "speedy" in wn.synonyms("quick")
    assert "leap" in wn.synonyms("jumps")        # morphology: jumps -> jump
    assert "domestic dog" in wn.synonyms("dogs", pos="n")
    assert wn.synonyms("xyzzyplugh") == []
    v = view("synonym", p=1.0, max_edits=1)
    (out,) = v(["The quick fox."])
    assert out != "The quick fox." and out.startswith("The ") and out.endswith(".")
    replaced = out[len("The "):-1].split(" ", 1)
    word = " ".join(replaced) if replaced[-1] != "fox" else replaced[0]
    assert any(w.lower() in [s.lower() for s in wn.synonyms("quick") + wn.synonyms("fox")] for w in (word, replaced[0]))


def test_synonyms_keep_stopwords_and_punctuation():
    (out,) = view("synonym", p=1.0)(["The dog, the cat!"])
    tokens = out.split()
    assert tokens[0] == "The" and tokens[-1].endswith("!") and "the" in tokens
    assert out.count(",") == 1 and ", the " in out and out != "The dog, the cat!"


def test_insert_adds_words_from_wordnet():
    source = "The quick brown fox jumps over the lazy dog."
    (out,) = view("insert", p=0.3)([source])
    assert len(out.split()) > len(source.split())
    assert [w for w in out.split() if w in source.split()] == source.split()  # originals kept in order


def test_missing_wordnet_is_a_clear_error(tmp_path):
    with pytest.raises(WordNetMissing, match="apt-get install wordnet-base"):
        find_wordnet_dir(tmp_path)
    with pytest.raises(MmsslError, match="apt-get install wordnet-base"):
        view("synonym", wordnet_dir=str(tmp_path))


def test_no_candidate_gives_none():
    assert view("synonym")(["the of and", "xyzzy qwrtp"]) == [None, None]


def test_text_views_transform():
    tv = TextViews([{"type": "synonym", "p": 0.3}, {"type": "swap", "p": 0.3}, {"type": "keyboard"}], seed=7)
    out = tv(SENTENCES)
    assert len(out) == len(SENTENCES) and all(isinstance(o, str) for o in out)
    assert sum(normalise(o) != normalise(s) for o, s in zip(out, SENTENCES)) >= 3
    assert tv(SENTENCES) == out
    assert tv(SENTENCES[:2], indices=[0, 1]) + tv(SENTENCES[2:], indices=[2, 3]) == out  # batch-independent
    assert tv(SENTENCES, epoch=1) != out                  # a new epoch draws new edits
    assert TextViews([{"type": "synonym"}], seed=0)(["of the and"]) == ["of the and"]  # unchanged -> source
    with pytest.raises(RecipeError, match="did you mean 'p'"):
        TextViews([{"type": "swap", "pp": 0.3}])
    with pytest.raises(RecipeError, match="choose one of"):
        TextViews([{"type": "synonyms"}])


def test_stopwords_are_lowercase_words():
    assert "the" in STOPWORDS and all(w == w.lower() for w in STOPWORDS)


def test_quality_reasons():
    q = QualityFilter()
    seen: set = set()
    reasons, sims = q.reasons(["a b c", "a b c", "x y", "p q"], ["A b, c!", "a c b", "a c b", None], seen)
    assert reasons == ["identical", None, None, "failed"] and sims == [None] * 4
    reasons, _ = q.reasons(["a b c"], ["a c b"], seen)
    assert reasons == ["duplicate"]
    assert count_reasons(["identical", None, "failed", "identical"])["identical"] == 2
    with pytest.raises(MmsslError, match="need quality.encoder"):
        QualityFilter(min_similarity=0.5)


def test_embedding_similarity_filter(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from mmssl.data.text_views.tiny import build_tiny_bert

    encoder = build_tiny_bert(tmp_path / "bert", SENTENCES, masked_lm=False)
    SentenceTransformer(modules=[Transformer(str(encoder)), Pooling(32, "mean")], device="cpu").save(str(tmp_path / "st"))
    anchors = SENTENCES
    views = ["The quick brown fox jumps over a lazy dog near the river.", "blue", "Children played in the garden.",
             "letter"]
    _, sims = QualityFilter(encoder=str(tmp_path / "st")).reasons(anchors, views)
    assert all(-1.0 <= s <= 1.0001 for s in sims)
    middle = sorted(sims)[1] + 1e-6
    low, _ = QualityFilter(encoder=str(tmp_path / "st"), min_similarity=middle).reasons(anchors, views)
    high, _ = QualityFilter(encoder=str(tmp_path / "st"), max_similarity=middle).reasons(anchors, views)
    assert low.count("too_dissimilar") == 2 and high.count("too_similar") == 2
    assert [r is None for r in low] == [r is not None for r in high]
    with pytest.raises(MmsslError, match="SentenceTransformer"):
        QualityFilter(encoder=str(tmp_path / "missing"))


def test_contextual_substitution_with_a_fill_mask_folder(tmp_path):
    from mmssl.data.text_views.tiny import build_tiny_bert

    model = build_tiny_bert(tmp_path / "mlm", SENTENCES, seed=1)
    v = view("contextual", model=str(model), p=0.5, top_k=10)
    out = v(SENTENCES)
    assert out == v(SENTENCES)
    assert sum(o is not None and normalise(o) != normalise(s) for o, s in zip(out, SENTENCES)) >= 3
    assert all(o is None or len(o.split()) == len(s.split()) for o, s in zip(out, SENTENCES))
    with pytest.raises(MmsslError, match="not a fill-mask model"):
        view("contextual", model=str(tmp_path / "nothing"))
