"""Vector quantisation against naive references: nearest code, straight-through gradient, commitment gradient,
EMA codebook with Laplace-smoothed counts, dead-code restarts and perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from mmssl.losses.vector_quantize import (
    VectorQuantizer,
    assignment_stats,
    commitment_loss,
    ema_codebook,
    nearest_codes,
    perplexity,
)


def test_nearest_code_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(50, 6, generator=g), torch.randn(9, 6, generator=g)
    naive = [min(range(9), key=lambda k: sum(float(z[i, d] - codebook[k, d]) ** 2 for d in range(6)))
             for i in range(50)]
    assert nearest_codes(z, codebook).tolist() == naive


def test_straight_through_passes_the_gradient_unchanged_and_commitment_pulls_the_encoder_only():
    g = torch.Generator().manual_seed(1)
    vq = VectorQuantizer(8, 4).eval()
    z = torch.randn(10, 4, generator=g, requires_grad=True)
    out = vq(z)
    assert torch.allclose(out["quantized"].detach(), vq.codebook[out["codes"]], atol=1e-6)  # forward: the codes
    weights = torch.randn(10, 4, generator=g)
    (out["quantized"] * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # backward: the identity
    z.grad = None
    q = vq.codebook[out["codes"]]
    commitment_loss(z, q).backward()
    assert torch.allclose(z.grad, 2 * (z.detach() - q) / z.numel())
    assert float(out["commitment"].detach()) == pytest.approx(float(((z.detach() - q) ** 2).mean()))


def naive_ema(count, embed_sum, z, codes, decay, eps):
    k, d = embed_sum.shape
    new_count = [decay * float(count[j]) + (1 - decay) * sum(1 for c in codes.tolist() if c == j) for j in range(k)]
    new_sum = [[decay * float(embed_sum[j, e]) + (1 - decay) * sum(float(z[i, e]) for i in range(len(z))
                                                                  if int(codes[i]) == j) for e in range(d)]
               for j in range(k)]
    total = sum(new_count)
    smoothed = [(c + eps) / (total + k * eps) * total for c in new_count]
    return (torch.tensor(new_count), torch.tensor(new_sum),
            torch.tensor([[new_sum[j][e] / smoothed[j] for e in range(d)] for j in range(k)]))


def test_ema_update_matches_a_naive_reference():
    g = torch.Generator().manual_seed(2)
    count, embed_sum = torch.rand(5, generator=g) * 3, torch.randn(5, 3, generator=g)
    z = torch.randn(12, 3, generator=g)
    codes = torch.tensor([0, 0, 1, 3, 3, 3, 1, 0, 4, 4, 0, 1])  # code 2 unused
    got = ema_codebook(count, embed_sum, *assignment_stats(z, codes, 5), decay=0.9, eps=0.1)
    for a, b in zip(got, naive_ema(count, embed_sum, z, codes, 0.9, 0.1)):
        assert torch.allclose(a, b, atol=1e-5)
    # the module applies the same update in training mode (its buffers), after assigning with the old codebook
    vq = VectorQuantizer(5, 3, decay=0.9, eps=0.1, restart_after=0)
    vq.initialised.fill_(True)
    vq.ema_count.copy_(count), vq.ema_sum.copy_(embed_sum)
    before = vq.codebook.clone()
    out = vq(z)
    assert torch.equal(out["codes"], nearest_codes(z, before))
    ref = naive_ema(count, embed_sum, z, out["codes"], 0.9, 0.1)
    assert torch.allclose(vq.ema_count, ref[0], atol=1e-5) and torch.allclose(vq.codebook, ref[2], atol=1e-5)
    vq.eval()
    vq(torch.randn(7, 3, generator=g))
    assert torch.allclose(vq.codebook, ref[2], atol=1e-5)  # evaluation leaves the codebook alone


def test_first_training_batch_initialises_the_codebook_from_encoder_outputs():
    z = torch.randn(40, 4, generator=torch.Generator().manual_seed(3))
    vq = VectorQuantizer(6, 4, decay=1.0, restart_after=0)  # decay 1: the EMA keeps the initial codebook
    random_start = vq.codebook.clone()
    torch.manual_seed(0)
    vq(z)
    assert bool(vq.initialised) and not torch.equal(vq.codebook, random_start)
    assert all(any(torch.allclose(code, row) for row in z) for code in vq.codebook)  # each code is an input
    again = vq.codebook.clone()
    vq(torch.randn(40, 4))
    assert torch.allclose(vq.codebook, again)  # initialised once


def test_a_code_unused_for_restart_after_steps_is_restarted_from_the_batch():
    vq = VectorQuantizer(3, 2, decay=0.5, restart_after=3)
    vq.initialised.fill_(True)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))  # code 2: far from every input
    vq.ema_sum.copy_(vq.codebook)
    z = torch.tensor([[0.1, 0.0], [0.9, 1.0], [0.0, 0.1], [1.1, 0.9]])
    torch.manual_seed(0)
    for step in (1, 2):
        vq(z)
        assert vq.unused_steps.tolist() == [0, 0, step] and int(vq.restarts) == 0
    vq(z)
    assert int(vq.restarts) == 1 and vq.unused_steps.tolist() == [0, 0, 0]
    assert any(torch.equal(vq.codebook[2], row) for row in z)  # a current encoder output
    assert float(vq.ema_count[2]) == 1.0 and torch.equal(vq.ema_sum[2], vq.codebook[2])
    assert all(n in dict(vq.named_buffers()) for n in ("codebook", "ema_count", "ema_sum", "unused_steps",
                                                         "initialised", "restarts"))
    assert set(vq.state_dict()) >= {"codebook", "ema_count", "ema_sum", "unused_steps", "initialised"}


def test_perplexity_is_the_number_of_codes_used_evenly():
    assert float(perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0]))) == pytest.approx(4.0)
    assert float(perplexity(torch.tensor([0.0, 12.0, 0.0]))) == pytest.approx(1.0)
    counts = torch.tensor([3.0, 1.0, 0.0, 4.0])
    p = [c / 8 for c in (3, 1, 4)]
    assert float(perplexity(counts)) == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-6)
