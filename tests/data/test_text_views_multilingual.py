"""Back-translation with the multilingual seq2seq families NLLB (``eng_Latn``) and M2M100 (``en``): tiny random
models built here (the M2M100 architecture with an NLLB or an M2M100 tokenizer, saved with save_pretrained and
loaded back through the Auto classes as a Hub checkpoint would be). The code path is real, the output noise:
the tests check language handling (source tag on the encoder input, target language forced as the first
generated token, clear errors for missing or unknown languages), not translation quality.

The M2M100 tokenizer needs the `sentencepiece` package (not a dependency of mmssl): its tests run where it is
installed; where it is not, the test that runs instead checks the error a user gets."""

from __future__ import annotations

import importlib.util
import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from mmssl.data.text_views import ViewConfig, build_views
from mmssl.data.text_views.backtranslation import (
    BackTranslation, Generation, Seq2SeqTranslator, TranslationError, UnsupportedLanguage)
from mmssl.schema import from_dict

TEXTS = ["a red circle is above a blue square", "the quick brown fox jumps over the lazy dog",
         "a small green star", "a small green star"]
GEN = Generation(num_beams=2, max_length=16, batch_size=2)
NLLB_LANGS = ["eng_Latn", "fra_Latn", "deu_Latn"]
HAS_SENTENCEPIECE = importlib.util.find_spec("sentencepiece") is not None
# transformers' M2M100Tokenizer gives these (fixed, fairseq) language codes the ids after the vocabulary; the
# list is copied because its module cannot be imported without sentencepiece
M2M100_LANGS = ("af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl gu ha he hi "
                "hr ht hu hy id ig ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms my ne nl no ns "
                "oc or pa pl ps pt ro ru sd si sk sl so sq sr ss su sv sw ta th tl tn tr uk ur uz vi wo xh yi yo zh "
                "zu").split()
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3, as in the real NLLB / M2M100 vocabularies


def _save_m2m100_model(directory: Path, vocab_size: int, seed: int, quiet: list[int]) -> None:
    """A random M2M100ForConditionalGeneration (the architecture of both NLLB and M2M100 checkpoints). The
    embeddings (tied to the output layer) of the `quiet` tokens are shrunk, so that the random model, like a
    trained one, does not keep generating language tags and other special tokens (outputs would be empty)."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    torch.manual_seed(seed)
    config = M2M100Config(vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=64, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                          decoder_start_token_id=2, init_std=1.0)  # large weights: outputs depend on the input
    model = M2M100ForConditionalGeneration(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[quiet] *= 0.01
    model.save_pretrained(directory)


def build_tiny_nllb(directory: Path, texts: list[str], seed: int = 0) -> str:
    """NLLB: a character-level NllbTokenizer (tokenizers backend, no sentencepiece) with three language codes."""
    from transformers import NllbTokenizer

    chars = sorted({c for text in texts for c in text.lower() if not c.isspace()})
    vocab = {token: i for i, token in enumerate([*SPECIAL, "▁", *chars])}
    tokenizer = NllbTokenizer(vocab=vocab, merges=[], additional_special_tokens=NLLB_LANGS, src_lang="eng_Latn")
    tokenizer.save_pretrained(directory)
    quiet = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
    _save_m2m100_model(directory, len(tokenizer), seed, quiet)
    return str(directory)


def build_tiny_m2m100(directory: Path, texts: list[str], seed: int = 0) -> str:
    """M2M100: vocab.json + a word-level sentencepiece model + tokenizer_config.json, the files of a real checkpoint
    (language tokens ``__en__`` ... after the vocabulary, listed as additional special tokens)."""
    directory.mkdir(parents=True, exist_ok=True)
    words = list(dict.fromkeys(w for text in texts for w in text.lower().split()))
    pieces = ["▁" + w for w in words] + ["▁"] + sorted({c for w in words for c in w})
    if HAS_SENTENCEPIECE:
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        for piece, kind, score in [("<unk>", 2, 0.0), ("<s>", 3, 0.0), ("</s>", 3, 0.0),
                                   *((p, 1, -float(len(p))) for p in pieces)]:
            entry = proto.pieces.add()
            entry.piece, entry.type, entry.score = piece, kind, score
        proto.trainer_spec.model_type = 1  # unigram
        proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
        proto.trainer_spec.pad_id = -1
        proto.normalizer_spec.name = "identity"
        proto.normalizer_spec.add_dummy_prefix = proto.normalizer_spec.escape_whitespaces = True
        (directory / "sentencepiece.bpe.model").write_bytes(proto.SerializeToString())
    else:  # never read: without sentencepiece, M2M100Tokenizer cannot be built at all
        (directory / "sentencepiece.bpe.model").write_bytes(b"")
    vocab = {token: i for i, token in enumerate([*SPECIAL, *pieces])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    codes = M2M100_LANGS  # ids len(vocab) ... in this order
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "M2M100Tokenizer", "src_lang": "en", "tgt_lang": None, "language_codes": "m2m100",
        "num_madeup_words": 8, "additional_special_tokens": [f"__{c}__" for c in codes], "bos_token": "<s>",
        "eos_token": "</s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "model_max_length": 1024}))
    size = len(vocab) + len(codes) + 8  # vocabulary, language tokens, made-up words
    _save_m2m100_model(directory, size, seed, quiet=[0, 1, 3, *range(len(vocab), size)])
    return str(directory)


@pytest.fixture(scope="module")
def nllb(tmp_path_factory) -> str:
    return build_tiny_nllb(tmp_path_factory.mktemp("nllb") / "nllb-200-tiny", TEXTS)


@pytest.fixture(scope="module")
def m2m100(tmp_path_factory) -> str:
    return build_tiny_m2m100(tmp_path_factory.mktemp("m2m") / "m2m100-tiny", TEXTS)


@pytest.fixture
def need_sentencepiece():
    assert HAS_SENTENCEPIECE, "the M2M100 tokenizer needs sentencepiece (a dependency of mmssl[text]): pip install sentencepiece"


@contextmanager
def recording(model):
    """Record (encoder input_ids, generated ids) of every model.generate call (the model is shared per folder)."""
    calls, real = [], model.generate

    def generate(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((kwargs["input_ids"], out))
        return out

    model.generate = generate
    try:
        yield calls
    finally:
        del model.generate


def bt_views(path: str, source: str | None, pivot: str | None):
    cfg = from_dict(ViewConfig, {"type": "backtranslation", "name": "bt", "device": "cpu",
                                 "generation": {"num_beams": 2, "max_length": 16, "batch_size": 2},
                                 "pivots": [{"forward": path, "backward": path, "source_lang": source,
                                             "pivot_lang": pivot}]})
    return build_views(cfg, seed=0)


def lang_id(translator: Seq2SeqTranslator, code: str) -> int:
    tok = translator.tokenizer
    return tok.get_lang_id(code) if hasattr(tok, "get_lang_id") else tok.convert_tokens_to_ids(code)


def check_direction(translator: Seq2SeqTranslator, source: str, target: str, texts: list[str]) -> list[str]:
    """Translate `texts`; every encoder input starts with the source tag, every output with the target tag."""
    src_id, tgt_id = lang_id(translator, source), lang_id(translator, target)
    assert translator.forced_bos == tgt_id
    with recording(translator.model) as calls:
        out = translator.translate(texts)
    assert calls and len(out) == len(texts)
    start = translator.model.config.decoder_start_token_id
    for input_ids, generated in calls:
        assert input_ids[:, 0].tolist() == [src_id] * len(input_ids)         # source language tag
        assert generated[:, 0].tolist() == [start] * len(generated)          # decoder start, then ...
        assert generated[:, 1].tolist() == [tgt_id] * len(generated)         # ... the forced target language
    tag = translator.tokenizer.convert_ids_to_tokens(tgt_id)
    assert all(isinstance(o, str) and o and tag not in o for o in out)       # language tags are not in the text
    return out


# ---------------------------------------------------------------- NLLB

def test_nllb_forces_the_target_language(nllb):
    translator = Seq2SeqTranslator(nllb, "eng_Latn", "fra_Latn", device="cpu", generation=GEN)
    tok = translator.tokenizer
    assert type(tok).__name__ == "NllbTokenizer" and translator.model.config.model_type == "m2m_100"
    assert translator.forced_bos == tok.convert_tokens_to_ids("fra_Latn") != tok.unk_token_id
    assert translator.prefix == ""
    out = check_direction(translator, "eng_Latn", "fra_Latn", TEXTS)
    assert out[2] == out[3] and translator.translated == 3

    german = Seq2SeqTranslator(nllb, "eng_Latn", "deu_Latn", device="cpu", generation=GEN)
    assert german.forced_bos == tok.convert_tokens_to_ids("deu_Latn") != translator.forced_bos
    assert german.setting() != translator.setting()  # other target language: another cache entry
    check_direction(german, "eng_Latn", "deu_Latn", TEXTS[:2])


def test_nllb_round_trip(nllb):
    (view,) = bt_views(nllb, "eng_Latn", "fra_Latn")
    assert isinstance(view, BackTranslation)
    assert view.describe()["source_lang"] == "eng_Latn" and view.describe()["pivot_lang"] == "fra_Latn"
    tok = view.forward.tokenizer
    assert view.forward.forced_bos == tok.convert_tokens_to_ids("fra_Latn")
    assert view.backward.forced_bos == tok.convert_tokens_to_ids("eng_Latn")
    with recording(view.forward.model) as calls:
        out = view(TEXTS)
    assert len(out) == len(TEXTS) and all(isinstance(o, str) and o for o in out)
    assert out[2] == out[3]
    forced = [generated[:, 1].unique().tolist() for _, generated in calls]  # forward batches, then backward
    fra, eng = view.forward.forced_bos, view.backward.forced_bos
    assert forced == [[fra]] * view.forward.calls + [[eng]] * view.backward.calls


def test_nllb_round_trip_tags_each_direction_with_its_source_language(nllb):
    (view,) = bt_views(nllb, "eng_Latn", "fra_Latn")
    check_direction(view.forward, "eng_Latn", "fra_Latn", TEXTS[:2])
    check_direction(view.backward, "fra_Latn", "eng_Latn", TEXTS[:2])


@pytest.mark.parametrize("source, pivot", [(None, "fra_Latn"), ("eng_Latn", None), (None, None)])
def test_nllb_needs_both_languages(nllb, source, pivot):
    with pytest.raises(UnsupportedLanguage, match=r"is multilingual: set source_lang and pivot_lang .*eng_Latn"):
        bt_views(nllb, source, pivot)
    with pytest.raises(UnsupportedLanguage, match="set source_lang and pivot_lang"):
        Seq2SeqTranslator(nllb, source, pivot, device="cpu")


@pytest.mark.parametrize("source, target", [("xxx_Latn", "fra_Latn"), ("eng_Latn", "xxx_Latn"),
                                            ("eng_Latn", "fr"), ("eng_Latn", "<unk>")])
def test_nllb_unknown_language(nllb, source, target):
    bad = source if source != "eng_Latn" else target
    with pytest.raises(UnsupportedLanguage, match=f"does not know language '{bad}'"):
        Seq2SeqTranslator(nllb, source, target, device="cpu")


def test_nllb_unknown_language_lists_known_ones(nllb):
    with pytest.raises(UnsupportedLanguage, match="it knows e.g. eng_Latn, fra_Latn, deu_Latn"):
        Seq2SeqTranslator(nllb, "eng_Latn", "xxx_Latn", device="cpu")


# ---------------------------------------------------------------- M2M100

def test_m2m100_forces_the_target_language(m2m100, need_sentencepiece):
    translator = Seq2SeqTranslator(m2m100, "en", "fr", device="cpu", generation=GEN)
    tok = translator.tokenizer
    assert type(tok).__name__ == "M2M100Tokenizer"
    assert translator.forced_bos == tok.get_lang_id("fr") == tok.convert_tokens_to_ids("__fr__")
    out = check_direction(translator, "en", "fr", TEXTS)
    assert out[2] == out[3]


def test_m2m100_round_trip(m2m100, need_sentencepiece):
    (view,) = bt_views(m2m100, "en", "fr")
    tok = view.forward.tokenizer
    assert (view.forward.forced_bos, view.backward.forced_bos) == (tok.get_lang_id("fr"), tok.get_lang_id("en"))
    out = view(TEXTS)
    assert len(out) == len(TEXTS) and all(isinstance(o, str) and o and "__" not in o for o in out)


def test_m2m100_languages(m2m100, need_sentencepiece):
    with pytest.raises(UnsupportedLanguage, match=r"\(m2m_100\) is multilingual: set source_lang and pivot_lang"):
        bt_views(m2m100, "en", None)
    for source, target, bad in (("en", "xx", "xx"), ("eng_Latn", "fr", "eng_Latn"), ("en", "__fr__", "__fr__")):
        with pytest.raises(UnsupportedLanguage, match=f"does not know language '{bad}'"):
            Seq2SeqTranslator(m2m100, source, target, device="cpu")
