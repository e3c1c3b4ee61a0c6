"""GradCache step: gradients equal the uncached computation, dropout included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmssl.losses import LearnableTemperature, cached_contrastive_backward, info_nce, split_batch


def make_encoder(dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 8))


def data(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


def grads(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for m in modules for p in m.parameters()]


def uncached(loss_fn, towers):
    """Reference: the same chunks embedded WITH grad in the same order, then one backward."""
    embs = [torch.cat([enc(c) for c in chunks]) for enc, chunks in towers]
    loss = loss_fn(*embs)
    loss.backward()
    return loss.detach()


def test_two_towers_with_dropout_match_uncached():
    enc = make_encoder()
    xq, xk = data(8, 1), data(8, 2)
    towers = [(enc, split_batch(xq, 2)), (enc, split_batch(xk, 2))]

    def loss_fn(q, k):
        return info_nce(q, k, temperature=0.1)

    torch.manual_seed(123)
    ref_loss = uncached(loss_fn, towers)
    ref = grads(enc)
    rng_after_ref = torch.get_rng_state()
    enc.zero_grad()
    torch.manual_seed(123)
    loss = cached_contrastive_backward(loss_fn, towers)
    assert torch.equal(torch.get_rng_state(), rng_after_ref)  # re-forwards do not advance the RNG
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for g, r in zip(grads(enc), ref):
        assert torch.allclose(g, r, atol=1e-6)

    # without restoring the RNG the dropout masks differ: the comparison above is not vacuous
    enc.zero_grad()
    torch.manual_seed(123)
    cached_contrastive_backward(loss_fn, towers, preserve_rng=False)
    assert not all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads(enc), ref))


def test_three_towers_and_learnable_temperature():
    q_enc, d_enc = make_encoder(), make_encoder()
    with torch.no_grad():
        for p in d_enc.parameters():
            p.mul_(0.5)
    loss_mod = LearnableTemperature(0.05)
    towers = [
        (q_enc, split_batch(data(8, 1), 2)),
        (d_enc, split_batch(data(8, 2), 3)),  # uneven chunks 3, 3, 2
        (d_enc, split_batch(data(4, 3), 2)),  # hard negatives
    ]

    def loss_fn(q, pos, neg):
        return info_nce(q, pos, extra_negatives=neg, logit_scale=loss_mod())

    torch.manual_seed(7)
    ref_loss = uncached(loss_fn, towers)
    ref = grads(q_enc, d_enc, loss_mod)
    for m in (q_enc, d_enc, loss_mod):
        m.zero_grad()
    torch.manual_seed(7)
    loss = cached_contrastive_backward(loss_fn, towers)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for g, r in zip(grads(q_enc, d_enc, loss_mod), ref):
        assert torch.allclose(g, r, atol=1e-6)


def test_eval_mode_equals_single_full_batch_forward():
    enc = make_encoder().eval()
    xq, xk = data(8, 1), data(8, 2)
    loss = info_nce(enc(xq), enc(xk), symmetric=True)
    loss.backward()
    ref = grads(enc)
    enc.zero_grad()
    cached = cached_contrastive_backward(
        lambda q, k: info_nce(q, k, symmetric=True), [(enc, split_batch(xq, 2)), (enc, split_batch(xk, 4))]
    )
    assert torch.allclose(cached, loss.detach(), atol=1e-6)
    for g, r in zip(grads(enc), ref):
        assert torch.allclose(g, r, atol=1e-6)


def test_dict_chunks_and_tower_without_gradient():
    enc = make_encoder(0.0)
    frozen = make_encoder(0.0).requires_grad_(False)
    batch = {"x": data(6, 1), "y": torch.arange(6)}
    chunks = split_batch(batch, 4)
    assert [len(c["x"]) for c in chunks] == [4, 2] and torch.equal(chunks[1]["y"], torch.tensor([4, 5]))
    cached_contrastive_backward(
        lambda q, k: info_nce(q, k), [(lambda c: enc(c["x"]), chunks), (frozen, split_batch(data(6, 2), 3))]
    )
    assert all(p.grad is not None for p in enc.parameters())
    assert all(p.grad is None for p in frozen.parameters())


def test_split_batch_and_errors():
    assert [len(c) for c in split_batch(list(range(5)), 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="chunk_size"):
        split_batch(data(4), 0)
    with pytest.raises(ValueError, match="same length"):
        split_batch({"a": torch.zeros(3), "b": torch.zeros(4)}, 2)
    enc = make_encoder()
    with pytest.raises(ValueError, match="at least one tower"):
        cached_contrastive_backward(lambda: torch.zeros(()), [])
    with pytest.raises(ValueError, match="must return a tensor"):
        cached_contrastive_backward(lambda q: q.sum(), [(lambda c: {"emb": enc(c)}, [data(2)])])
    with pytest.raises(ValueError, match="scalar"):
        cached_contrastive_backward(lambda q: q, [(enc, [data(2)])])


def test_custom_backward_scales_the_cached_gradients():
    """`backward=` replaces loss.backward() in step 2 (a trainer's finiteness check and accumulation scaling);
    the scaling reaches the encoder through the cached embedding gradients."""
    enc = make_encoder(dropout=0.0)
    towers = [(enc, split_batch(data(8, 1), 4)), (enc, split_batch(data(8, 2), 4))]

    def loss_fn(q, k):
        return info_nce(q, k, temperature=0.1)

    cached_contrastive_backward(loss_fn, towers)
    ref = grads(enc)
    enc.zero_grad()
    seen = []

    def quarter(loss):
        seen.append(loss.detach())
        (loss / 4).backward()

    loss = cached_contrastive_backward(loss_fn, towers, backward=quarter)
    assert len(seen) == 1 and torch.equal(seen[0], loss)
    for g, r in zip(grads(enc), ref):
        assert torch.allclose(g * 4, r, atol=1e-6)
