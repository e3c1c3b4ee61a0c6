"""Tokenizers: a pretrained one from a local path or Hub id, or one trained on the recipe's corpus.

WordPiece (BERT-style, with [CLS]/[SEP]/[MASK]) for masked LM, byte-level BPE (GPT-2-style) for causal LM;
both are wrapped as `transformers` fast tokenizers, so they save beside the model and load with AutoTokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mmssl.errors import MmsslError
from mmssl.config import TokenizerConfig

TokenizerKind = Literal["wordpiece", "bpe"]


def load_pretrained_tokenizer(path: str, trust_remote_code: bool = False, key: str = "tokenizer.path",
                              allow_key: str | None = "tokenizer.trust_remote_code") -> PreTrainedTokenizerFast:
    """A tokenizer folder or Hub id; custom code that comes with it runs only with `trust_remote_code`."""
    from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

    refuse_prompts()
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        if is_custom_code_error(exc):
            raise custom_code_error(key, path, allow_key) from None
        raise MmsslError(
            f"tokenizer {path!r} could not be loaded ({type(exc).__name__}: {exc}); "
            "give a local folder with tokenizer files or a Hub id (online), or remove tokenizer.path to train one"
        ) from None


def train_wordpiece(texts: Iterable[str], vocab_size: int, min_frequency: int, lowercase: bool) -> PreTrainedTokenizerFast:
    """Note: `tokenizers`' WordPiece trainer breaks ties between equally frequent merges in a per-process
    order, so two processes may learn slightly different vocabularies from one corpus. Resumed runs
    therefore reuse the tokenizer saved in the checkpoint; pass tokenizer.path to pin one across runs."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def train_byte_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    eos, pad = "<|endoftext|>", "<pad>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos, pad],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=pad, model_max_length=1024
    )


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_tokenizer(cfg: TokenizerConfig, kind: TokenizerKind, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Load `cfg.path`, or train a `kind` tokenizer of `cfg.vocab_size` on `texts`."""
    if cfg.path:
        return load_pretrained_tokenizer(cfg.path, cfg.trust_remote_code)
    if kind == "wordpiece":
        return train_wordpiece(_batches(texts), cfg.vocab_size, cfg.min_frequency, cfg.lowercase)
    return train_byte_bpe(_batches(texts), cfg.vocab_size, cfg.min_frequency)
