"""The causal LM's output layer per device: chunked (CPU), plain (GPU without Liger), Liger (GPU with it); the
chunked and plain paths give the same loss and gradients, and an impossible choice is a clear error."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mmssl.errors import RecipeError
from mmssl.models import lm
from mmssl.models.lm import CausalLMModule, resolve_output_loss


def test_each_device_gets_its_output_layer(monkeypatch):
    monkeypatch.setattr(lm, "liger_available", lambda: False)
    assert resolve_output_loss("auto", on_cuda=False) == "chunked"
    assert resolve_output_loss("auto", on_cuda=True) == "plain"
    assert resolve_output_loss("plain", on_cuda=False) == "plain"
    with pytest.raises(RecipeError, match=r"output_loss=liger needs Liger Kernel: pip install 'mmssl\[gpu\]'"):
        resolve_output_loss("liger", on_cuda=True)
    monkeypatch.setattr(lm, "liger_available", lambda: True)
    assert resolve_output_loss("auto", on_cuda=True) == "liger"
    assert resolve_output_loss("auto", on_cuda=False) == "chunked"
    with pytest.raises(RecipeError, match="runs on CUDA only"):
        resolve_output_loss("liger", on_cuda=False)


def test_chunked_and_plain_give_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=500, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    ids = torch.randint(500, (4, 24))
    results = {}
    for kind in ("chunked", "plain"):
        module = CausalLMModule(model, chunk_size=16, output_loss=kind)
        model.zero_grad(set_to_none=True)
        loss = module(ids, None, ids)["loss"]
        loss.backward()
        results[kind] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (chunked, g1), (plain, g2) = results["chunked"], results["plain"]
    assert abs(chunked - plain) < 1e-5 and chunked > 5  # about ln(500) at init: a real loss
    assert g1.keys() == g2.keys() and len(g1) > 10
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-5, rtol=1e-4), name
