"""InstDisc's memory bank and losses against naive per-example references (Wu et al. 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmssl.losses.instance import bank_logits, estimate_log_z, instance_nce_loss, instance_softmax_loss
from mmssl.models.memory_bank import MemoryBank


def test_bank_starts_normalised_and_updates_seen_rows_by_momentum_only():
    bank = MemoryBank(10, 4, momentum=0.5, seed=3)
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(10))
    assert torch.equal(bank.features, MemoryBank(10, 4, momentum=0.5, seed=3).features)  # seeded
    before = bank.features.clone()
    index = torch.tensor([2, 7])
    new = F.normalize(torch.randn(2, 4), dim=1)
    bank.update(index, new)
    for row in range(10):
        if row in (2, 7):
            j = [2, 7].index(row)
            expected = 0.5 * before[row] + 0.5 * new[j]
            assert torch.allclose(bank.features[row], expected / expected.norm(), atol=1e-6)
        else:
            assert torch.equal(bank.features[row], before[row])
    samples = bank.sample(3, 1000)
    assert samples.shape == (3, 1000) and samples.min() >= 0 and samples.max() <= 9 and len(samples.unique()) == 10


def naive_losses(query, positive, negatives, t, n, log_z):
    """One example at a time, straight from the formulas."""
    softmax, nce = [], []
    k = negatives.shape[1]
    for b in range(query.shape[0]):
        s_pos = float(query[b] @ positive[b]) / t
        s_neg = [float(query[b] @ negatives[b, j]) / t for j in range(k)]
        softmax.append(-s_pos + math.log(math.exp(s_pos) + sum(math.exp(s) for s in s_neg)))
        p_pos, noise = math.exp(s_pos - log_z), k / n
        h_pos = p_pos / (p_pos + noise)
        term = -math.log(h_pos)
        for s in s_neg:
            p = math.exp(s - log_z)
            term -= math.log(1 - p / (p + noise))
        nce.append(term)
    return sum(softmax) / len(softmax), sum(nce) / len(nce)


def test_softmax_and_nce_losses_match_the_formulas():
    torch.manual_seed(0)
    query = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1)
    positive = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1)
    negatives = F.normalize(torch.randn(5, 7, 8, dtype=torch.float64), dim=2)
    t, n = 0.1, 1000
    logits = bank_logits(query, positive, negatives, t).double()
    log_z = float(estimate_log_z(logits[:, 1:], n))
    mean_exp = float(torch.exp(logits[:, 1:]).mean())
    assert math.isclose(log_z, math.log(n * mean_exp), rel_tol=1e-6)  # Z = n * E[exp(s)]
    softmax, nce = naive_losses(query, positive, negatives, t, n, log_z)
    assert math.isclose(float(instance_softmax_loss(logits)), softmax, rel_tol=1e-6)
    assert math.isclose(float(instance_nce_loss(logits, n, log_z)), nce, rel_tol=1e-6)


def test_nce_pulls_the_positive_up_and_the_negatives_down():
    logits = torch.zeros(1, 5, requires_grad=True)
    instance_nce_loss(logits, 100, 0.0).backward()
    assert logits.grad[0, 0] < 0 and (logits.grad[0, 1:] > 0).all()


def test_negatives_shared_by_the_batch_give_the_logits_of_the_same_negatives_per_example():
    torch.manual_seed(0)
    query, positive = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    shared = F.normalize(torch.randn(6, 8), dim=1)
    per_example = shared.expand(4, 6, 8)
    assert torch.allclose(bank_logits(query, positive, shared, 0.1), bank_logits(query, positive, per_example, 0.1),
                          atol=1e-6)


def test_one_process_draws_shared_negatives_uniformly_from_the_whole_bank():
    bank = MemoryBank(10, 4, seed=1)
    assert not bank.sharded and bank.rows_held == 10
    torch.manual_seed(0)
    drawn = bank.sample_shared(2000)
    assert drawn.shape == (2000, 4)
    rows = {tuple(r.tolist()) for r in drawn}
    assert rows == {tuple(r.tolist()) for r in bank.features}  # every entry, nothing else
