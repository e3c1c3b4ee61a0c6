"""A text encoder: any transformers ``AutoModel`` + pooling (cls, mean, last_token) + an optional
projection head used only in training + an optional L2 normalisation.

It exports as a sentence-transformers folder (``models.Transformer`` + ``models.Pooling`` (+
``models.Normalize``)), so ``SentenceTransformer(DIR)`` loads it offline and reproduces
:meth:`TextEncoder.embed` (the head is not exported: it only shapes the training loss, as in SimCSE).

Inputs may come *packed*: a list of groups plus the permutation that restores the original order. A group is
either padded to its own longest sequence (length-sorted buckets, :func:`mmssl.models.padding.pack_sequences`)
or a few rows of sequences laid end to end with a block-diagonal attention mask
(:func:`mmssl.models.packing.pack_rows`: no padding and, usually, one group and one encoder pass per batch).
Either way it is one ``forward`` call per step (one DDP forward).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.errors import MmsslError
from mmssl.models.heads import text_head
from mmssl.models.packing import pool_packed
from mmssl.models.padding import POOLING_MODES, pad_sequences, pool
from mmssl.config import ModelConfig

Pooling = Literal["cls", "mean", "last_token"]
Head = Literal["none", "linear", "mlp"]
_ST_POOLING = {"cls": "cls", "mean": "mean", "last_token": "lasttoken"}
_FROM_ST_POOLING = {v: k for k, v in _ST_POOLING.items()}


class TextEncoder(nn.Module):
    """``AutoModel`` + pooling (+ training head) (+ normalisation).

    * :meth:`embed` - the sentence embedding users get (pooled, normalised if ``normalize``): what the
      exported sentence-transformers folder computes.
    * :meth:`forward` - the training embedding: the head applied to the pooled output (then normalised
      if ``normalize``). Accepts plain ``input_ids``/``attention_mask`` or a packed batch.
    """

    def __init__(self, model: nn.Module, pooling: str = "mean", normalize: bool = False,
                 head: str = "none", head_dim: int | None = None) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.model = model
        self.pooling = pooling
        self.normalize = normalize
        self.hidden_size = int(model.config.hidden_size)
        self.head_kind = head
        self.head = text_head(head, self.hidden_size, head_dim)

    @property
    def embedding_dim(self) -> int:
        """Dimension of the training embedding (after the head)."""
        return getattr(self.head, "out_features", self.hidden_size)

    def _pooled(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        out = self._pooled(input_ids, attention_mask)
        return F.normalize(out, dim=-1) if self.normalize else out

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
                packed: dict[str, Any] | None = None, head: bool = True) -> Tensor:
        if packed is not None:
            outs = [self._group(g, head) for g in packed["groups"]]
            out = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
            return out[packed["restore"]] if packed.get("restore") is not None else out
        out = self._pooled(input_ids, attention_mask)
        if head:
            out = self.head(out)
        return F.normalize(out, dim=-1) if self.normalize else out

    def _group(self, group: dict[str, Any], head: bool) -> Tensor:
        """One group of a batch: padded (``input_ids``, ``attention_mask``) or packed rows (`pack_rows`)."""
        if "row" not in group:
            return self.forward(group["input_ids"], group["attention_mask"], head=head)
        hidden = self.model(input_ids=group["input_ids"], position_ids=group["position_ids"],
                            attention_mask=group["attention_mask"]).last_hidden_state
        out = pool_packed(hidden, group, self.pooling)
        if head:
            out = self.head(out)
        return F.normalize(out, dim=-1) if self.normalize else out

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: Sequence[str], tokenizer, max_length: int = 128, batch_size: int = 64,
               device: torch.device | str | None = None) -> Tensor:
        """Sentence embeddings [N, H] of `texts` (eval mode, length-sorted batches, no head), on CPU."""
        was_training = self.training
        self.eval()
        device = device or next(self.parameters()).device
        ids = tokenizer(list(texts), truncation=True, max_length=max_length, return_attention_mask=False)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), self.hidden_size)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = pad_sequences([ids[i] for i in rows], pad)
            emb = self.embed(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out[rows] = emb.float().cpu()
        self.train(was_training)
        return out

    # -- export --------------------------------------------------------------------------------
    def save_sentence_transformer(self, directory: str | Path, tokenizer, max_seq_length: int) -> None:
        """Write a sentence-transformers folder: Transformer (+ Pooling) (+ Normalize), no head."""
        save_sentence_transformer(self, directory, tokenizer, max_seq_length)


# --------------------------------------------------------------------------------------------------
# building and loading
# --------------------------------------------------------------------------------------------------


def build_backbone(cfg: ModelConfig, tokenizer) -> nn.Module:
    """A transformers ``AutoModel`` (SDPA attention): `cfg.pretrained` (folder or Hub id) or `cfg.arch` + `cfg.config`."""
    from transformers import AutoModel

    from mmssl.models.lm import build_transformers_model

    return build_transformers_model(cfg, AutoModel, "a transformers encoder", tokenizer,
                                    {"pad_token_id": tokenizer.pad_token_id})


def freeze_unused_parameters(encoder: TextEncoder, tokenizer) -> list[str]:
    """Turn off gradients of parameters the embedding never uses (e.g. BERT's pooler), so DDP without
    ``find_unused_parameters`` works and AdamW does not decay weights that get no gradient. Returns their names."""
    text = "a b"
    ids = tokenizer([text], return_tensors="pt")
    was_training = encoder.training
    encoder.train()
    encoder.zero_grad(set_to_none=True)
    encoder(ids["input_ids"], ids.get("attention_mask")).sum().backward()
    unused = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    for name, param in encoder.named_parameters():
        if name in unused:
            param.requires_grad_(False)
    encoder.zero_grad(set_to_none=True)
    encoder.train(was_training)
    return unused


def _attention(model: nn.Module) -> str:
    impl = getattr(model.config, "_attn_implementation", None)
    return impl if impl in ("sdpa", "eager") else "sdpa"


def save_sentence_transformer(encoder: TextEncoder, directory: str | Path, tokenizer, max_seq_length: int) -> None:
    """Save ``encoder`` (without its training head) as a sentence-transformers folder in `directory`."""
    import tempfile

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MmsslError("exporting a text encoder needs sentence-transformers: pip install 'mmssl[text]'") from None

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # 5.x
        from sentence_transformers import models  # type: ignore[no-redef]

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        encoder.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        transformer = models.Transformer(tmp, max_seq_length=max_seq_length,
                                         model_kwargs={"attn_implementation": _attention(encoder.model)})
        modules: list[nn.Module] = [transformer, models.Pooling(encoder.hidden_size, _ST_POOLING[encoder.pooling])]
        if encoder.normalize:
            modules.append(models.Normalize())
        st = SentenceTransformer(modules=modules, device="cpu")
        st.save(str(directory), create_model_card=False)


def load_sentence_transformer_dir(directory: str | Path, trust_remote_code: bool = False) -> tuple[TextEncoder, Any, int]:
    """(encoder, tokenizer, max_seq_length) from a sentence-transformers folder with one Transformer,
    one Pooling (cls/mean/lasttoken) and an optional Normalize, as :func:`save_sentence_transformer` writes."""
    from transformers import AutoModel, AutoTokenizer

    from mmssl.models.lm import with_sdpa_or_eager
    from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

    refuse_prompts()

    directory = Path(directory)
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        raise MmsslError(f"{str(directory)!r} is not a sentence-transformers folder (no modules.json)")
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    pooling, normalize = "mean", False
    for entry in modules:
        kind = entry["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            config = json.loads((directory / entry["path"] / "config.json").read_text(encoding="utf-8"))
            mode = config.get("pooling_mode")
            if mode is None:  # legacy boolean keys
                mode = next((m for key, m in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                                              ("pooling_mode_lasttoken", "lasttoken")) if config.get(key)), "mean")
            if isinstance(mode, list):
                mode = mode[0] if len(mode) == 1 else None
            if mode not in _FROM_ST_POOLING:
                raise MmsslError(f"{str(directory)!r}: pooling {mode!r} is not supported (use cls, mean or lasttoken)")
            pooling = _FROM_ST_POOLING[mode]
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            raise MmsslError(f"{str(directory)!r}: module {entry['type']} is not supported by mmssl's text encoder")
    st_config = directory / "sentence_bert_config.json"
    max_seq_length = 128
    if st_config.is_file():
        max_seq_length = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length") or max_seq_length
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        model = with_sdpa_or_eager(lambda attn: AutoModel.from_pretrained(
            str(directory), attn_implementation=attn, trust_remote_code=trust_remote_code))
    except ValueError as exc:
        if is_custom_code_error(exc):
            raise custom_code_error("model", str(directory), None) from None
        raise
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 100_000:
        max_seq_length = min(max_seq_length, tok_max) if st_config.is_file() else tok_max
    return TextEncoder(model, pooling=pooling, normalize=normalize), tokenizer, int(max_seq_length)
