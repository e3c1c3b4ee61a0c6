"""Transformers language models for pretraining, with output layers that do only the work the loss needs.

* Masked LM: the prediction head runs on the masked positions only (about 15% of tokens) instead of
  every position, which removes most of the vocabulary projection's cost.
* Causal LM: on a CPU the vocabulary projection and cross-entropy are fused and chunked
  (`fused_linear_cross_entropy`), so the [tokens x vocabulary] logits are never held in memory; on a GPU
  Liger Kernel's fused kernel where installed, else one plain matrix product (`resolve_output_loss`).
"""

from __future__ import annotations

import difflib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mmssl.errors import MmsslError, RecipeError
from mmssl.config import ModelConfig

LMKind = Literal["mlm", "clm"]
_AUTO = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM}


def with_sdpa_or_eager(load):
    """``load(attn_implementation)`` with PyTorch's SDPA attention, or eager attention for the architectures that
    have no SDPA path (MPNet, DeBERTa-v2, ...)."""
    try:
        return load("sdpa")
    except ValueError as exc:
        if "scaled_dot_product_attention" not in str(exc):
            raise
        return load("eager")


def build_transformers_model(cfg: ModelConfig, auto, what: str, tokenizer, special: dict) -> PreTrainedModel:
    """`auto` model (an Auto* class, SDPA attention where the architecture has it) from `cfg.pretrained`, or a fresh `cfg.arch` sized by
    `cfg.config`; `what` names the kind of model in error messages."""
    if cfg.pretrained:
        from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

        refuse_prompts()
        try:
            model = with_sdpa_or_eager(lambda attn: auto.from_pretrained(
                cfg.pretrained, attn_implementation=attn, trust_remote_code=cfg.trust_remote_code))
        except Exception as exc:
            if is_custom_code_error(exc):
                raise custom_code_error("model.pretrained", cfg.pretrained, "model.trust_remote_code") from None
            raise MmsslError(
                f"model.pretrained {cfg.pretrained!r} could not be loaded as {what} "
                f"({type(exc).__name__}: {exc}); give a local transformers folder or a Hub id (online)"
            ) from None
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        return model
    if not cfg.arch:
        raise RecipeError("model: set model.pretrained (a folder or Hub id) or model.arch (e.g. 'bert', 'gpt2')")
    if cfg.arch not in CONFIG_MAPPING:
        hint = difflib.get_close_matches(cfg.arch, list(CONFIG_MAPPING.keys()), n=3)
        raise RecipeError(
            f"model.arch: unknown transformers model type {cfg.arch!r}"
            + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "; use e.g. 'bert', 'roberta' or 'gpt2'")
        )
    settings = {"vocab_size": len(tokenizer), **special, **cfg.config}
    if settings["vocab_size"] < len(tokenizer):
        raise RecipeError(
            f"model.config.vocab_size={settings['vocab_size']} is smaller than the tokenizer's {len(tokenizer)} tokens"
        )
    try:
        config = AutoConfig.for_model(cfg.arch, **settings)
        return with_sdpa_or_eager(lambda attn: auto.from_config(config, attn_implementation=attn))
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a negative size reaches torch as RuntimeError
        raise RecipeError(f"model: cannot build {what} {cfg.arch!r} from model.config ({exc}); fix model.config "
                          "(sizes must be positive, hidden_size a multiple of the number of heads)") from None


def build_language_model(cfg: ModelConfig, kind: LMKind, tokenizer) -> PreTrainedModel:
    """Pretrained weights from `cfg.pretrained`, or a fresh `cfg.arch` model sized by `cfg.config`."""
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
        "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
    }
    return build_transformers_model(cfg, _AUTO[kind], f"a {kind.upper()} model", tokenizer, special)


def max_positions(model: PreTrainedModel) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T (+ bias)`` against `labels`, in chunks of rows.

    The gradients are computed during the forward pass chunk by chunk (softmax minus one-hot, times the
    inputs), so peak memory holds one [chunk x vocabulary] block instead of the whole logits tensor and
    its gradient. Rows whose label is `ignore_index` contribute nothing.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index: int, chunk_size: int):  # type: ignore[override]
        valid = labels != ignore_index
        count = valid.sum().clamp(min=1)
        needs_grad = ctx.needs_input_grad
        grad_hidden = torch.empty_like(hidden) if needs_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if (bias is not None and needs_grad[2]) else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            y = labels[start : start + chunk_size]
            ok = valid[start : start + chunk_size]
            safe_y = torch.where(ok, y, torch.zeros_like(y))
            # The block is held transposed, [vocabulary x chunk]: `weight @ h.T` and `block @ h` are 1.5-1.7x
            # faster on a CPU than the [chunk x vocabulary] products (their output is small or K is large).
            # Few passes over it: logits, max, exp in place, sum; the softmax normalisation and the 1/count
            # scale are folded into [chunk]-sized factors.
            h_t = h.t().contiguous()
            logits = (weight @ h_t if bias is None else torch.addmm(bias[:, None], weight, h_t)).float()
            target_logit = logits.gather(0, safe_y[None, :]).squeeze(0)
            top = logits.amax(dim=0, keepdim=True)
            exp = logits.sub_(top).exp_()
            norm = exp.sum(dim=0)
            lse = top.squeeze(0) + norm.log()
            total += ((lse - target_logit) * ok).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            row = ok.float() / count              # d(mean loss)/d(row loss)
            # d loss / d logits = softmax * row - onehot(y) * row; softmax * row = exp * (row / norm)
            probs = exp.mul_((row / norm)[None, :])
            if grad_hidden is not None:
                g = (probs.t().to(h.dtype) @ weight).float() - row[:, None] * weight[safe_y].float()
                grad_hidden[start : start + chunk_size] = g.to(h.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(probs, h.float())
                grad_weight.index_add_(0, safe_y, h.float() * -row[:, None])
            if grad_bias is not None:
                grad_bias += probs.sum(dim=1)
                grad_bias.index_add_(0, safe_y, -row)
        ctx.save_for_backward(
            *(t if t is not None else torch.empty(0) for t in (grad_hidden, grad_weight, grad_bias))
        )
        ctx.has = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total / count

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        saved = ctx.saved_tensors
        grads = [(g * grad_output).to(dtype) if has else None for g, has, dtype in zip(saved, ctx.has, ctx.dtypes)]
        return grads[0], grads[1], grads[2], None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Mean token cross-entropy of a linear output layer without materialising all logits."""
    return FusedLinearCrossEntropy.apply(hidden, weight, bias, labels, ignore_index, chunk_size)


_MLM_HEADS = ("cls", "lm_head", "predictions", "generator_lm_head")


class MaskedLMModule(nn.Module):
    """Wraps a ``*ForMaskedLM`` model; its forward returns the loss over masked positions only."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        # The head's attribute name, not the module: registering it twice would duplicate its weights.
        self.head_name = next((n for n in _MLM_HEADS if isinstance(getattr(model, n, None), nn.Module)), None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> dict:
        selected = labels != -100
        if self.head_name is None:  # unknown head layout: fall back to the model's own (dense) loss
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            return {"loss": out.loss}
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = getattr(self.model, self.head_name)(hidden[selected])
        return {"loss": F.cross_entropy(logits.float(), labels[selected])}


OutputLoss = Literal["auto", "chunked", "plain", "liger"]


def resolve_output_loss(choice: OutputLoss, on_cuda: bool) -> str:
    """The causal LM's output layer + loss: ``chunked`` (`fused_linear_cross_entropy`: the CPU default, least
    memory), ``plain`` (one logits matrix product and PyTorch's cross-entropy: a GPU's default without Liger),
    ``liger`` (Liger Kernel's fused linear cross-entropy, Triton on CUDA: the GPU default where installed)."""
    if choice == "auto":
        if not on_cuda:
            return "chunked"
        return "liger" if liger_available() else "plain"
    if choice == "liger":
        if not liger_available():
            raise RecipeError("objective.output_loss=liger needs Liger Kernel: pip install 'mmssl[gpu]' (CUDA only)")
        if not on_cuda:
            raise RecipeError("objective.output_loss=liger runs on CUDA only; use chunked or plain on a CPU")
    return choice


def liger_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


class CausalLMModule(nn.Module):
    """Wraps a ``*ForCausalLM`` model; next-token loss through the output layer `resolve_output_loss` chose."""

    def __init__(self, model: PreTrainedModel, chunk_size: int = 256, output_loss: str = "chunked"):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.output_loss = output_loss
        self._liger: nn.Module | None = None
        if output_loss == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            self._liger = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> dict:
        output_layer = self.model.get_output_embeddings()
        if not isinstance(output_layer, nn.Linear):  # unusual head: use the model's own loss
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            return {"loss": out.loss}
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        targets = labels[:, 1:].reshape(-1)
        if self.output_loss == "plain":
            logits = F.linear(hidden, output_layer.weight, output_layer.bias)
            loss = F.cross_entropy(logits.float(), targets, ignore_index=-100)
        elif self._liger is not None:
            loss = self._liger(output_layer.weight, hidden, targets, output_layer.bias)
        else:
            loss = fused_linear_cross_entropy(hidden, output_layer.weight, targets, output_layer.bias, -100,
                                              self.chunk_size)
        return {"loss": loss}
