"""MoCHi's synthetic negatives, the debiased loss and hardness weighting (`mmssl.losses.hard_negatives`, through
`info_nce`) against naive references from the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmssl.errors import RecipeError
from mmssl.losses import info_nce, nt_xent
from mmssl.losses.hard_negatives import NegativeShaping, mochi_mixes


def unit(*shape, seed=0, grad=False, dtype=torch.float64):
    x = F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)
    return x.requires_grad_(grad)


def test_mixes_lie_on_the_segment_between_their_parents_and_the_query_share_stays_below_its_bound():
    torch.manual_seed(0)
    query, hard = unit(6, 5, seed=1), unit(6, 8, 5, seed=2)
    mixes = mochi_mixes(query, hard, pairs=7, query_mixes=9, query_max=0.3)
    assert mixes.points.shape == (6, 16, 5)
    assert torch.allclose(mixes.points.norm(dim=-1), torch.ones(6, 16, dtype=torch.float64))
    weight = mixes.weight.squeeze(-1)
    assert (weight >= 0).all() and (weight <= 1).all() and (weight[:, 7:] < 0.3).all()
    assert weight[:, 7:].max() > 0.15  # drawn over the whole range, not pinned
    mixed = weight[..., None] * mixes.first + (1 - weight[..., None]) * mixes.second
    assert torch.allclose(F.normalize(mixed, dim=-1), mixes.points)
    assert torch.equal(mixes.first[:, 7:], query[:, None].expand(6, 9, 5))  # the query mixes start at the query
    for b in range(6):  # every other parent is one of this query's own hard negatives
        parents = torch.cat([mixes.first[b, :7], mixes.second[b]])
        assert all(any(torch.equal(p, h) for h in hard[b]) for p in parents)


def test_mochi_negatives_come_from_the_hardest_negatives_only_and_take_no_gradient():
    q, k = unit(4, 6, seed=3, grad=True), unit(4, 6, seed=4, grad=True)
    extra = unit(5, 6, seed=5, grad=True)
    shaping = NegativeShaping(mochi_hardest=3, mochi_pairs=4, mochi_query=2)
    torch.manual_seed(7)
    got = info_nce(q, k, extra_negatives=extra, temperature=0.2, shaping=shaping, reduction="none")
    # reference: the three highest-scoring non-positive columns of each row, mixed with the same draws, as
    # constant extra columns
    cols = F.normalize(torch.cat([k, extra]), dim=-1)  # unit already; info_nce normalises (and so its gradient)
    qn = F.normalize(q, dim=-1)
    logits = qn @ cols.T / 0.2
    masked = logits.detach().clone()
    masked[torch.arange(4), torch.arange(4)] = -math.inf
    hard = cols.detach()[masked.topk(3, dim=1).indices]
    torch.manual_seed(7)
    points = mochi_mixes(q.detach(), hard, 4, 2).points
    full = torch.cat([logits, torch.einsum("bd,bkd->bk", qn, points) / 0.2], dim=1)
    ref = F.cross_entropy(full, torch.arange(4), reduction="none")
    assert torch.allclose(got, ref, atol=1e-10)
    got_grads = torch.autograd.grad(got.sum(), (q, k, extra))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, extra))
    for a, b in zip(got_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)
    plain = info_nce(q, k, extra_negatives=extra, temperature=0.2, reduction="none")
    assert (got > plain).all()  # more (and hard) negatives: a larger loss for every query


def test_all_options_off_is_the_plain_loss_exactly():
    q, k = unit(5, 4, seed=1, dtype=torch.float32), unit(5, 4, seed=2, dtype=torch.float32)
    plain = info_nce(q, k, temperature=0.1, symmetric=True)
    for off in (NegativeShaping(), NegativeShaping(mochi_hardest=8), NegativeShaping(mochi_query_max=0.2)):
        assert torch.equal(info_nce(q, k, temperature=0.1, symmetric=True, shaping=off), plain)
    assert torch.equal(nt_xent(q, k, 0.5, shaping=NegativeShaping()), nt_xent(q, k, 0.5))


def naive_shaped_loss(q, k, temperature, tau_plus, beta):
    """Robinson et al.'s reference code, one row at a time (beta 0 and tau_plus > 0: Chuang et al.'s)."""
    out = []
    for i in range(q.shape[0]):
        sims = [float(q[i] @ k[j]) / temperature for j in range(k.shape[0])]
        pos = math.exp(sims[i])
        neg = [math.exp(s) for j, s in enumerate(sims) if j != i]
        n = len(neg)
        imp = [math.exp(beta * math.log(x)) for x in neg]
        reweighted = sum(w * x for w, x in zip(imp, neg)) / (sum(imp) / n)
        ng = max((-tau_plus * n * pos + reweighted) / (1 - tau_plus), n * math.exp(-1 / temperature))
        out.append(-math.log(pos / (pos + ng)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("tau_plus, beta", [(0.1, 0.0), (0.0, 1.0), (0.1, 1.0), (0.3, 0.5)])
def test_debiased_and_hardness_weighted_losses_match_the_papers_code(tau_plus, beta):
    q, k = unit(6, 5, seed=11, grad=True), unit(6, 5, seed=12)
    shaping = NegativeShaping(tau_plus=tau_plus, beta=beta)
    got = info_nce(q, k, temperature=0.5, shaping=shaping, reduction="none")
    assert torch.allclose(got, naive_shaped_loss(q.detach(), k, 0.5, tau_plus, beta), atol=1e-9)
    plain = info_nce(q, k, temperature=0.5, reduction="none")
    assert not torch.allclose(got, plain, atol=1e-4)
    got.mean().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_the_floor_holds_when_the_correction_would_go_negative_and_clip_scale_does_not_overflow():
    q = unit(3, 4, seed=1)
    k = q.clone()  # every positive at cosine 1: tau+ N e^{pos} exceeds the sum of the negatives
    got = info_nce(q, k, temperature=0.5, shaping=NegativeShaping(tau_plus=0.9), reduction="none")
    assert torch.allclose(got, naive_shaped_loss(q, k, 0.5, 0.9, 0.0), atol=1e-9)
    big_q, big_k = unit(64, 16, seed=2, grad=True, dtype=torch.float32), unit(64, 16, seed=3, dtype=torch.float32)
    loss = info_nce(big_q, big_k, logit_scale=100.0, symmetric=True,
                    shaping=NegativeShaping(mochi_hardest=8, mochi_pairs=4, mochi_query=4, tau_plus=0.05, beta=1.0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big_q.grad).all()


def test_bad_settings_are_one_clear_recipe_message(tmp_path):
    from mmssl.recipes import parse_recipe

    base = {"output_dir": str(tmp_path), "data": {"source": "world"}, "model": {"arch": "resnet18"},
            "objective": {"name": "simclr"}}
    for shaping, message in [({"mochi_pairs": 4}, "set negative_shaping.mochi_hardest"),
                             ({"tau_plus": 1.0}, "tau_plus: 1.0 is out of range; it must be >= 0 and < 1"),
                             ({"mochi_hardest": 4, "mochi_query": 2, "mochi_query_max": 0.7},
                              "mochi_query_max: 0.7 is out of range; it must be > 0 and <= 0.5"),
                             ({"beta": -1}, "beta: -1.0 is out of range; it must be >= 0")]:
        raw = {**base, "objective": {"name": "simclr", "negative_shaping": shaping}}
        with pytest.raises(RecipeError, match=message):
            parse_recipe(raw)
