"""word2vec's batched negative-sampling losses against a naive loop over (centre, context) pairs, and the
subsampling and noise distributions against word2vec.c's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmssl.losses.word2vec import keep_probabilities, noise_distribution, word2vec_loss


def naive_loss(inputs, outputs, ids, sentence, reduced, noise, window, negatives, architecture):
    """One (centre, context) pair or one centre at a time, as word2vec.c walks the text."""
    total, count = 0.0, 0
    n = len(ids)
    for t in range(n):
        context = [c for c in range(max(0, t - window), min(n, t + window + 1))
                   if c != t and abs(c - t) <= reduced[t] and sentence[c] == sentence[t]]

        def noise_term(hidden, row):
            if noise.ndim == 2:
                return sum(F.softplus(hidden @ outputs[noise[row, k]]) for k in range(negatives))
            return negatives / len(noise) * sum(F.softplus(hidden @ outputs[w]) for w in noise)

        if architecture == "skipgram":
            for c in context:
                total = total + F.softplus(-(inputs[ids[c]] @ outputs[ids[t]])) + noise_term(inputs[ids[c]], c)
                count += 1
        elif context:
            hidden = torch.stack([inputs[ids[c]] for c in context]).mean(0)
            total = total + F.softplus(-(hidden @ outputs[ids[t]])) + noise_term(hidden, t)
            count += 1
    return total, count


@pytest.mark.parametrize("architecture", ["skipgram", "cbow"])
@pytest.mark.parametrize("sharing", ["token", "batch"])
def test_loss_and_gradients_match_a_loop_over_pairs(architecture, sharing):
    g = torch.Generator().manual_seed(0)
    vocab, dim, n, window, negatives = 11, 6, 23, 3, 4
    ids = torch.randint(0, vocab, (n,), generator=g)
    sentence = torch.tensor([0] * 9 + [1] * 2 + [2] * 12)  # a short sentence: pairs never cross sentences
    reduced = torch.randint(1, window + 1, (n,), generator=g)
    noise = torch.randint(0, vocab, (n, negatives) if sharing == "token" else (7,), generator=g)
    tables = [torch.randn(vocab, dim, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    loss, pairs = word2vec_loss(*tables, ids, sentence, reduced, noise, window, negatives, architecture)
    loss.backward()
    got = [t.grad.clone() for t in tables]
    for t in tables:
        t.grad = None
    word2vec_loss(*tables, ids, sentence, reduced, noise, window, negatives, architecture, sparse=True)[0].backward()
    assert all(t.grad.is_sparse and torch.allclose(t.grad.to_dense(), g) for t, g in zip(tables, got))
    for t in tables:
        t.grad = None
    expected, count = naive_loss(*tables, ids, sentence, reduced, noise, window, negatives, architecture)
    expected.backward()
    assert int(pairs) == count and loss.item() == pytest.approx(expected.item(), rel=1e-10)
    for mine, reference in zip(got, (t.grad for t in tables)):
        assert torch.allclose(mine, reference, atol=1e-10), (mine - reference).abs().max()


def test_the_gradient_follows_the_upstream_scale():
    g = torch.Generator().manual_seed(1)
    tables = [torch.randn(5, 3, generator=g, requires_grad=True) for _ in range(2)]
    ids, sentence, reduced = torch.tensor([0, 1, 2, 3, 4]), torch.zeros(5, dtype=torch.long), torch.full((5,), 2)
    noise = torch.randint(0, 5, (5, 2), generator=g)
    loss, _ = word2vec_loss(*tables, ids, sentence, reduced, noise, 2, 2)
    (3 * loss).backward()
    tripled = tables[0].grad.clone()
    tables[0].grad = None
    word2vec_loss(*tables, ids, sentence, reduced, noise, 2, 2)[0].backward()
    assert torch.allclose(tripled, 3 * tables[0].grad)


def test_subsampling_and_noise_follow_word2vec_c():
    counts = torch.tensor([1000, 100, 10, 1])
    keep = keep_probabilities(counts, 1e-2)
    t = 1e-2 * 1111
    for c, k in zip(counts.tolist(), keep.tolist()):
        assert k == pytest.approx(min(1.0, (math.sqrt(c / t) + 1) * t / c), rel=1e-6)
    assert torch.equal(keep_probabilities(counts, 0), torch.ones(4))
    noise = noise_distribution(counts)
    assert float(noise.sum()) == pytest.approx(1.0) and float(noise[0] / noise[1]) == pytest.approx(10 ** 0.75)
