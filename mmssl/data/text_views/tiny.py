"""Tiny, randomly initialised MarianMT translation models saved locally (tests and benchmarks).

Nothing on the Hugging Face Hub is reachable offline, and no pretrained translation model ships in a
package, so tests and `scripts/bench_augment.py` exercise the real back-translation code path with these:
a real `MarianMTModel` + a fast word-level tokenizer (`tokenizers`; no sentencepiece needed). Their
output is noise, their cost per token is that of a (small) real Marian model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

SPECIAL = ["<pad>", "</s>", "<unk>"]


def _words(texts: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
            seen.setdefault(word, None)
    return list(seen)


def build_tiny_marian(directory: str | Path, texts: Iterable[str], *, d_model: int = 32, layers: int = 1,
                      ffn_dim: int = 64, heads: int = 2, language_tokens: Iterable[str] = (), seed: int = 0,
                      max_position_embeddings: int = 256, init_std: float = 0.02) -> Path:
    """Save a random MarianMT model and its tokenizer (vocabulary: the words of `texts`) into `directory`.

    `language_tokens` (e.g. ``[">>fra<<", ">>deu<<"]``) makes it look like a multilingual OPUS-MT model
    whose target language is chosen by a ``>>xxx<<`` prefix. `init_std`: with the usual 0.02 a random model
    gives (nearly) the same output for every input; about 1.0 makes outputs depend on the input, vary in
    length and often end with end-of-sentence, like a real model's (what benchmarks need).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    language_tokens = list(language_tokens)
    vocab = {token: i for i, token in enumerate([*SPECIAL, *language_tokens, *_words(texts)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([*SPECIAL, *language_tokens])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", vocab["</s>"])])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, glues punctuation
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_input_names=["input_ids", "attention_mask"], model_max_length=512)
    fast.save_pretrained(directory)
    torch.manual_seed(seed)
    config = MarianConfig(vocab_size=len(vocab), decoder_vocab_size=len(vocab), d_model=d_model,
                          encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                          decoder_attention_heads=heads, encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim,
                          max_position_embeddings=max_position_embeddings, pad_token_id=vocab["<pad>"],
                          eos_token_id=vocab["</s>"], decoder_start_token_id=vocab["<pad>"],
                          forced_eos_token_id=vocab["</s>"], init_std=init_std)
    model = MarianMTModel(config)
    model.generation_config.max_length = 64
    model.generation_config.num_beams = 1
    model.save_pretrained(directory)
    return directory


def build_tiny_bert(directory: str | Path, texts: Iterable[str], *, masked_lm: bool = True, hidden: int = 32,
                    seed: int = 0) -> Path:
    """Save a random BERT (`BertForMaskedLM` for fill-mask, else `BertModel`) with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForMaskedLM, BertModel, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate([*specials, *_words(texts)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128,
                                   model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=0)
    (BertForMaskedLM if masked_lm else BertModel)(config).save_pretrained(directory)
    return directory
