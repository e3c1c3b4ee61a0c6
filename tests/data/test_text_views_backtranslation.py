"""Back-translation views: transformers seq2seq (tiny random MarianMT models saved locally: the code path
is real, the output is noise), the on-disk cache (a second run makes zero model calls), Apertium (real
rule-based round trips), and clear errors for bad models, languages and missing packages."""

from __future__ import annotations

import shutil

import pytest

from mmssl.data.text_views import ViewConfig, build_views
from mmssl.data.text_views.backtranslation import (
    ApertiumMissing, ApertiumTranslator, Generation, Seq2SeqTranslator, TranslationError, UnsupportedLanguage)
from mmssl.data.text_views.cache import TranslationCache
from mmssl.data.text_views.tiny import build_tiny_bert, build_tiny_marian
from mmssl.schema import from_dict

TEXTS = ["a red circle is above a blue square", "the quick brown fox jumps over the lazy dog",
         "a small green star", "there is a large yellow triangle on the left of the picture", "a small green star"]
GEN = Generation(num_beams=2, max_length=12, batch_size=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    return {
        "en-de": str(build_tiny_marian(root / "en-de", TEXTS, seed=1)),
        "de-en": str(build_tiny_marian(root / "de-en", TEXTS, seed=2)),
        "en-mul": str(build_tiny_marian(root / "en-mul", TEXTS, seed=3, language_tokens=[">>fra<<", ">>deu<<"])),
        "opus": str(build_tiny_marian(root / "opus-mt-en-de", TEXTS, seed=4)),
        "bert": str(build_tiny_bert(root / "bert", TEXTS)),
    }


def bt_view(models, cache, **generation):
    cfg = from_dict(ViewConfig, {"type": "backtranslation", "name": "bt", "device": "cpu",
                                 "generation": {"num_beams": 2, "max_length": 12, "batch_size": 2, **generation},
                                 "pivots": [{"forward": models["en-de"], "backward": models["de-en"], "pivot_lang": "de"}]})
    (view,) = build_views(cfg, seed=0, cache=cache)
    return view


def test_backtranslation_batches_and_caches(models, tmp_path):
    cache = TranslationCache(tmp_path / "cache.sqlite")
    view = bt_view(models, cache)
    out = view(TEXTS)
    assert len(out) == len(TEXTS) and all(isinstance(o, str) and o for o in out)
    assert out[2] == out[4]                       # duplicates translated once ...
    assert view.forward.translated == 4 and view.backward.translated >= 1
    assert view.forward.calls == 2                # ... in batches of 2 (4 unique texts)
    assert len(cache) >= 5
    cache.close()

    # a second run (new process state: new translators, same cache file) makes zero model calls
    again = bt_view(models, TranslationCache(tmp_path / "cache.sqlite"))
    assert again(TEXTS) == out
    assert again.forward.calls == 0 and again.backward.calls == 0
    assert again.forward.cache.hits >= 4

    # other generation settings are another cache entry
    other = bt_view(models, TranslationCache(tmp_path / "cache.sqlite"), num_beams=1)
    other(TEXTS[:1])
    assert other.forward.calls == 1


def test_backtranslation_is_independent_of_batching_and_order(models):
    a = Seq2SeqTranslator(models["en-de"], device="cpu", generation=GEN).translate(TEXTS)
    b = Seq2SeqTranslator(models["en-de"], device="cpu",
                          generation=Generation(num_beams=2, max_length=12, batch_size=5)).translate(TEXTS[::-1])
    assert a == b[::-1]


def test_sampling_is_seeded(models):
    gen = Generation(num_beams=1, do_sample=True, top_k=50, max_length=12, batch_size=8)
    first = Seq2SeqTranslator(models["en-de"], device="cpu", generation=gen, seed=1).translate(TEXTS)
    assert Seq2SeqTranslator(models["en-de"], device="cpu", generation=gen, seed=1).translate(TEXTS) == first
    assert Seq2SeqTranslator(models["en-de"], device="cpu", generation=gen, seed=2).translate(TEXTS) != first


def test_long_inputs_are_truncated_and_counted(models):
    translator = Seq2SeqTranslator(models["en-de"], device="cpu", generation=GEN)
    out = translator.translate([" ".join(["red circle"] * 50), "a red circle"])
    assert translator.truncated == 1 and len(out) == 2


def test_multilingual_marian_target_token(models):
    translator = Seq2SeqTranslator(models["en-mul"], target_lang="fra", device="cpu", generation=GEN)
    assert translator.prefix == ">>fra<< "
    assert len(translator.translate(TEXTS[:2])) == 2
    with pytest.raises(UnsupportedLanguage, match="'ita' is not one of them"):
        Seq2SeqTranslator(models["en-mul"], target_lang="ita", device="cpu")
    with pytest.raises(UnsupportedLanguage):
        Seq2SeqTranslator(models["en-mul"], device="cpu")  # a target is required


def test_opus_name_language_mismatch(models):
    Seq2SeqTranslator(models["opus"], source_lang="en", target_lang="de", device="cpu")
    with pytest.raises(UnsupportedLanguage, match="translates en → de"):
        Seq2SeqTranslator(models["opus"], source_lang="fr", target_lang="de", device="cpu")


def test_not_a_translation_model(models, tmp_path):
    with pytest.raises(TranslationError, match="not a sequence-to-sequence translation model"):
        Seq2SeqTranslator(models["bert"], device="cpu")
    with pytest.raises(TranslationError, match="not a transformers model folder"):
        Seq2SeqTranslator(str(tmp_path / "no-such-model"), device="cpu")


def test_apertium_round_trip(tmp_path):
    """Not skipped: CI installs Apertium (`apt-get install -y apertium-eng-spa`, see .ci/run)."""
    assert shutil.which("apertium"), "apertium is not installed: apt-get install -y apertium-eng-spa"
    cfg = from_dict(ViewConfig, {"type": "backtranslation", "backend": "apertium", "pivots": [{"forward": "eng-spa"}]})
    (view,) = build_views(cfg, cache=TranslationCache(tmp_path / "c.sqlite"))
    texts = ["The quick brown fox jumps over the lazy dog.", "a small yellow circle at the top",
             "There is a\nline break", "brackets [like] this ^and$ /slashes/"]
    out = view(texts)
    assert len(out) == 4 and all(o and o == o.strip() for o in out)
    assert out[1] != texts[1] and "yellow" in out[1] and "*" not in "".join(out)
    assert view.forward.calls == 1 and view.backward.calls == 1  # one process per direction for all lines
    (again,) = build_views(cfg, cache=TranslationCache(tmp_path / "c.sqlite"))
    assert again(texts) == out and again.forward.calls == 0


def test_apertium_missing_pair_or_binary(monkeypatch):
    assert shutil.which("apertium"), "apertium is not installed: apt-get install -y apertium-eng-spa"
    with pytest.raises(ApertiumMissing, match="apt-get install apertium-eng-xxx"):
        ApertiumTranslator("eng-xxx")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ApertiumMissing, match="apt-get install apertium-eng-spa"):
        ApertiumTranslator("eng-spa")


def test_killed_run_resumes_from_its_last_batch(models, tmp_path):
    gen = Generation(num_beams=1, max_length=10, batch_size=1)
    crashing = Seq2SeqTranslator(models["en-de"], device="cpu", generation=gen,
                                 cache=TranslationCache(tmp_path / "c.sqlite"))
    real_generate, calls = crashing.model.generate, []

    def generate(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the third batch
        calls.append(1)
        return real_generate(*args, **kwargs)

    crashing.model.generate = generate
    try:
        with pytest.raises(KeyboardInterrupt):
            crashing.translate(TEXTS)
    finally:
        del crashing.model.generate  # the model object is shared by every translator of this folder
    resumed = Seq2SeqTranslator(models["en-de"], device="cpu", generation=gen,
                                cache=TranslationCache(tmp_path / "c.sqlite"))
    out = resumed.translate(TEXTS)
    assert resumed.calls == 2 and resumed.translated == 2  # 4 unique texts, 2 were done before the kill
    assert out == Seq2SeqTranslator(models["en-de"], device="cpu", generation=gen).translate(TEXTS)


def test_each_output_is_capped_by_its_own_input_length(models):
    """The length cap is per row: a short text batched with a long one still stops at its own cap (so the
    output does not depend on its batch), while an uncapped run of the same text goes longer."""
    long_text, short_text = " ".join(TEXTS[:4]), "a small green star"
    capped = Generation(num_beams=1, max_length=64, length_ratio=1.0, length_extra=1, batch_size=2)
    translator = Seq2SeqTranslator(models["en-de"], device="cpu", generation=capped)
    together = translator.translate([long_text, short_text])
    alone = Seq2SeqTranslator(models["en-de"], device="cpu", generation=capped).translate([short_text])
    tok = translator.tokenizer
    lengths = [len(tok(t)["input_ids"]) for t in (long_text, short_text)]
    outputs = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in together]
    assert outputs[1] <= lengths[1] + 1 < outputs[0] <= lengths[0] + 1
    assert together[1] == alone[0]
    free = Generation(num_beams=1, max_length=64, length_ratio=100.0, batch_size=2)
    uncapped = Seq2SeqTranslator(models["en-de"], device="cpu", generation=free).translate([short_text])
    assert len(tok(uncapped[0], add_special_tokens=False)["input_ids"]) > outputs[1]  # the cap did bind
