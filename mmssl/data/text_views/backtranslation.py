"""Back-translation views: English → pivot language → English, with transformers seq2seq models
(MarianMT/OPUS-MT, NLLB, M2M100, mBART-50; local folders or Hub ids) or the rule-based Apertium CLI.

Speed (see scripts/bench_augment.py): unique texts only; cached translations skipped; texts sorted by
token length and batched so padding is small; each output capped at ``length_ratio × its input length +
length_extra`` tokens (bounded by ``max_length``), row by row; `torch.inference_mode`; each model loaded once
per process and shared by every view that names it.

Sampling (``do_sample: true``) is seeded per batch from (seed, batch contents): repeatable for the same
data and batch size, but a different batching can give other samples. Beam search and greedy decoding
do not depend on batching.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import subprocess
from dataclasses import asdict
from typing import Any

from mmssl.data.text_views.base import View
from mmssl.data.text_views.cache import NoCache, TranslationCache, cache_key, fingerprint_model, setting_key
from mmssl.data.text_views.config import GenerationConfig
from mmssl.errors import MmsslError

log = logging.getLogger(__name__)


class TranslationError(MmsslError):
    """A translation model or backend cannot be used as asked."""


class UnsupportedLanguage(TranslationError):
    """The model or backend does not translate between the languages asked for."""


class ApertiumMissing(TranslationError):
    """The Apertium CLI or a language pair of it is not installed."""


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


Generation = GenerationConfig  # how translations are generated (all part of the cache key)


class Translator:
    """One direction (source → target). Subclasses implement `_translate` (no cache, unique texts)."""

    def __init__(self, cache: TranslationCache | NoCache | None = None) -> None:
        self.cache = cache if cache is not None else NoCache()
        self.calls = 0       # batches sent to the model / backend processes started
        self.truncated = 0   # inputs cut to max_length
        self.translated = 0  # texts actually translated (not from the cache)

    def setting(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def _translate(self, texts: list[str]) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def translate(self, texts: list[str]) -> list[str]:
        unique = list(dict.fromkeys(texts))
        setting = self.setting()
        keys = {t: cache_key(t, setting) for t in unique}
        found = self.cache.get_many(list(keys.values()))
        todo = [t for t in unique if keys[t] not in found]
        if todo:
            self._keys = keys
            done = self._translate(todo)
            self.translated += len(todo)
            found.update({keys[t]: out for t, out in zip(todo, done)})
        return [found[keys[t]] for t in texts]

    def _save(self, texts: list[str], outputs: list[str]) -> None:
        """Commit one batch to the cache at once, so a killed run resumes after its last batch."""
        self.cache.put_many({self._keys[t]: o for t, o in zip(texts, outputs)})


_MODELS: dict[tuple[str, str], tuple[Any, Any]] = {}
_LANG_TOKEN = re.compile(r"^>>[\w-]+<<$")
_OPUS = re.compile(r"opus-mt-([a-z]{2,3})(?:_[a-z]+)?-([a-z]{2,3})\b", re.I)


def _first_line(exc: Exception) -> str:
    """The first non-empty line of an error (transformers' missing-backend errors start with a newline)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:200]


def load_seq2seq(path: str, device: str) -> tuple[Any, Any]:
    """(tokenizer, model) for a translation model, loaded once per process; clear errors for wrong paths."""
    key = (path, device)
    if key in _MODELS:
        return _MODELS[key]
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

    refuse_prompts()
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        if is_custom_code_error(exc):
            raise custom_code_error("translation model", path, None) from None
        raise TranslationError(
            f"translation model {path!r}: not a transformers model folder or reachable Hub id ({type(exc).__name__}: "
            f"{_first_line(exc)}); give a MarianMT/NLLB/M2M100 folder or Hub id"
        ) from None
    if not getattr(config, "is_encoder_decoder", False):
        raise TranslationError(
            f"translation model {path!r} is a {config.model_type!r} model, not a sequence-to-sequence translation "
            "model; give a MarianMT (opus-mt-*), NLLB or M2M100 model"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        if is_custom_code_error(exc):
            raise custom_code_error("translation model", path, None) from None
        raise TranslationError(f"translation model {path!r}: could not load it ({type(exc).__name__}: "
                               f"{_first_line(exc)})") from None
    model.eval().to(device)
    _MODELS[key] = (tokenizer, model)
    return tokenizer, model


class Seq2SeqTranslator(Translator):
    """Translate with a transformers seq2seq model; languages as the model family names them
    (Marian multilingual: ``fra`` → ``>>fra<<``; NLLB: ``fra_Latn``; M2M100: ``fr``; mBART-50: ``fr_XX``)."""

    def __init__(self, path: str, source_lang: str | None = None, target_lang: str | None = None,
                 device: str = "auto", generation: Generation | None = None,
                 cache: TranslationCache | NoCache | None = None, seed: int = 0) -> None:
        super().__init__(cache)
        self.path, self.source_lang, self.target_lang = path, source_lang, target_lang
        self.device = resolve_device(device)
        self.generation = generation or Generation()
        self.seed = seed
        self.tokenizer, self.model = load_seq2seq(path, self.device)
        self.prefix = ""
        self.forced_bos: int | None = None
        self._languages()
        self._fingerprint = fingerprint_model(path)

    def _lang_id(self, code: str) -> int | None:
        tok = self.tokenizer
        if hasattr(tok, "get_lang_id"):  # M2M100
            try:
                return tok.get_lang_id(code)
            except (KeyError, AttributeError):
                return None
        token_id = tok.convert_tokens_to_ids(code)
        return None if token_id is None or token_id == tok.unk_token_id else token_id

    def _languages(self) -> None:
        tok, config = self.tokenizer, self.model.config
        src, tgt = self.source_lang, self.target_lang
        kind = type(tok).__name__.lower() + " " + config.model_type
        multilingual = any(k in kind for k in ("nllb", "m2m", "mbart"))
        if multilingual:
            if not src or not tgt:
                raise UnsupportedLanguage(f"translation model {self.path!r} ({config.model_type}) is multilingual: set "
                                          "source_lang and pivot_lang (e.g. NLLB eng_Latn/fra_Latn, M2M100 en/fr)")
            for code in (src, tgt):
                if self._lang_id(code) is None:
                    known = list(getattr(tok, "lang_code_to_id", None) or getattr(tok, "extra_special_tokens", None)
                                 or getattr(tok, "additional_special_tokens", None) or [])[:12]
                    raise UnsupportedLanguage(f"translation model {self.path!r} does not know language {code!r}"
                                              + (f"; it knows e.g. {', '.join(known)}" if known else ""))
            tok.src_lang = src
            self.forced_bos = self._lang_id(tgt)
            return
        targets = sorted(t for t in tok.get_vocab() if _LANG_TOKEN.match(t))
        if targets:  # multilingual OPUS-MT: the target language is a >>xxx<< prefix
            token = f">>{tgt}<<" if tgt else None
            if token not in targets:
                raise UnsupportedLanguage(
                    f"translation model {self.path!r} translates into {', '.join(t[2:-2] for t in targets[:20])}"
                    f"{' ...' if len(targets) > 20 else ''}; pivot/target language {tgt!r} is not one of them")
            self.prefix = token + " "
        match = _OPUS.search(self.path)
        if match:
            for given, expected, what in ((src, match.group(1), "source"), (tgt, match.group(2), "target")):
                if given and not targets and given[:2].lower() != expected[:2].lower():
                    raise UnsupportedLanguage(f"translation model {self.path!r} translates {match.group(1)} → "
                                              f"{match.group(2)}, but {what} language {given!r} was asked for")

    def setting(self) -> str:
        return setting_key(model=self._fingerprint, src=self.source_lang, tgt=self.target_lang, prefix=self.prefix,
                           generation=asdict(self.generation), seed=self.seed if self.generation.do_sample else None)

    def _cap(self, input_length: int) -> int:
        """Most tokens generated for one input: ratio × its length + extra, at most max_length."""
        g = self.generation
        return min(g.max_length, math.ceil(g.length_ratio * min(input_length, g.max_length)) + g.length_extra)

    def _translate(self, texts: list[str]) -> list[str]:
        import torch

        g, tok = self.generation, self.tokenizer
        if self.forced_bos is not None:  # the tokenizer is shared by every translator of this folder
            tok.src_lang = self.source_lang
        inputs = [self.prefix + t for t in texts]
        lengths = [len(ids) for ids in tok(inputs, add_special_tokens=True)["input_ids"]]
        self.truncated += sum(n > g.max_length for n in lengths)
        order = sorted(range(len(inputs)), key=lambda i: -lengths[i])
        out: list[str] = [""] * len(inputs)
        for start in range(0, len(order), g.batch_size):
            batch = order[start:start + g.batch_size]
            enc = tok([inputs[i] for i in batch], padding=True, truncation=True, max_length=g.max_length,
                      return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            caps = [self._cap(lengths[i]) for i in batch]
            kwargs: dict[str, Any] = {"num_beams": g.num_beams, "do_sample": g.do_sample, "max_new_tokens": max(caps),
                                      "max_length": None, "stopping_criteria": _row_limits(caps),
                                      "forced_eos_token_id": None}  # rows end by their own caps, not forced EOS
            if g.do_sample:
                kwargs.update(top_k=g.top_k, top_p=g.top_p, temperature=g.temperature)
            if self.forced_bos is not None:
                kwargs["forced_bos_token_id"] = self.forced_bos
            with torch.inference_mode(), torch.random.fork_rng(devices=[] if self.device == "cpu" else None):
                if g.do_sample:
                    digest = hashlib.sha256(f"{self.seed}\x1f{inputs[batch[0]]}\x1f{len(batch)}".encode()).digest()
                    torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
                generated = self.model.generate(**enc, **kwargs)
            self.calls += 1
            decoded = [text.strip() for text in tok.batch_decode(generated, skip_special_tokens=True)]
            for i, text in zip(batch, decoded):
                out[i] = text
            self._save([texts[i] for i in batch], decoded)
        return out


def _row_limits(caps: list[int]):
    """A stopping criterion that ends each row at its own token cap. Caps per row (not per batch) keep
    greedy and beam outputs independent of which texts share a batch, and stop short rows early."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    limits = torch.tensor(caps)

    class RowLimits(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            per_row = limits.to(input_ids.device).repeat_interleave(input_ids.shape[0] // len(limits))
            return (input_ids.shape[1] - 1) >= per_row  # the decoder starts from one start token

    return StoppingCriteriaList([RowLimits()])


class ApertiumTranslator(Translator):
    """Rule-based translation with the Apertium CLI (`apertium -u MODE`), many lines per process."""

    def __init__(self, mode: str, cache: TranslationCache | NoCache | None = None, chunk_lines: int = 5000) -> None:
        super().__init__(cache)
        self.mode, self.chunk_lines = mode, chunk_lines
        self.executable = shutil.which("apertium")
        if self.executable is None:
            raise ApertiumMissing("the Apertium CLI is not installed (no `apertium` on PATH); install it with a "
                                  "language pair, e.g. `apt-get install apertium-eng-spa`")
        self._run(["check"])  # fails early for a missing language pair
        self.calls = 0

    def _run(self, lines: list[str]) -> list[str]:
        data = "\n".join(" ".join(line.split()) for line in lines) + "\n"
        done = subprocess.run([self.executable, "-u", self.mode], input=data, capture_output=True, text=True)
        self.calls += 1
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip()
            if "does not exist" in message or "Mode" in message:
                pair = self.mode.replace("_", "-")
                raise ApertiumMissing(f"Apertium has no mode {self.mode!r} ({message.splitlines()[0]}); install the pair, "
                                      f"e.g. `apt-get install apertium-{'-'.join(pair.split('-')[:2])}`; installed: "
                                      f"{', '.join(m.strip() for m in message.splitlines()[1:])}")
            raise TranslationError(f"apertium {self.mode} failed: {message[:300]}")
        out = done.stdout.split("\n")
        if out and out[-1] == "":
            out.pop()
        if len(out) != len(lines):
            raise TranslationError(f"apertium {self.mode} returned {len(out)} lines for {len(lines)}")
        return [line.strip() for line in out]

    def setting(self) -> str:
        return setting_key(backend="apertium", mode=self.mode)

    def _translate(self, texts: list[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), self.chunk_lines):
            chunk = texts[start:start + self.chunk_lines]
            done = self._run(chunk)
            self._save(chunk, done)
            out += done
        return out


class BackTranslation(View):
    """source → pivot → source with two translators; returns None where the result is empty."""

    def __init__(self, forward: Translator, backward: Translator, name: str = "backtranslation", seed: int = 0,
                 info: dict | None = None) -> None:
        self.forward, self.backward, self.name, self.seed = forward, backward, name, seed
        self.info = info or {}

    def apply(self, texts: list[str], indices: list[int]) -> list[str | None]:
        pivot = self.forward.translate(texts)
        back = self.backward.translate(pivot)
        return [b if b.strip() else None for b in back]

    @property
    def truncated(self) -> int:
        return self.forward.truncated + self.backward.truncated

    def describe(self) -> dict:
        return {"name": self.name, "type": "BackTranslation", **self.info}
