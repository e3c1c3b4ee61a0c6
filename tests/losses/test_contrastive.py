"""InfoNCE family against a naive per-row implementation and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mmssl.losses import (
    LearnableTemperature,
    contrastive_margin_loss,
    duplicate_mask,
    info_nce,
    mutual_information_lower_bound,
    text_ids,
    triplet_loss,
)


def naive_rows(rows, cols, temperature, offset=0, pos_mask=None, fn_mask=None):
    """Explicit loop: -log softmax of the positive(s) per row, masked columns left out."""
    rows = torch.nn.functional.normalize(rows.double(), dim=-1)
    cols = torch.nn.functional.normalize(cols.double(), dim=-1)
    out = []
    for i in range(rows.shape[0]):
        positives = [offset + i] if pos_mask is None else [j for j in range(cols.shape[0]) if pos_mask[i, j]]
        sims = [float(rows[i] @ cols[j]) / temperature for j in range(cols.shape[0])]
        allowed = [j for j in range(cols.shape[0]) if j in positives or fn_mask is None or not fn_mask[i, j]]
        log_denominator = math.log(sum(math.exp(sims[j]) for j in allowed))
        out.append(sum(log_denominator - sims[p] for p in positives) / len(positives))
    return torch.tensor(out, dtype=torch.float64)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("num_extra", [0, 3])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_matches_naive(num_extra, temperature):
    q, k = rand(5, 4, seed=1), rand(5, 4, seed=2)
    extra = rand(num_extra, 4, seed=3) if num_extra else None
    got = info_nce(q, k, temperature=temperature, extra_negatives=extra)
    cols = k if extra is None else torch.cat([k, extra])
    assert torch.allclose(got, naive_rows(q, cols, temperature).mean(), atol=1e-10)


def test_label_offset_matches_naive():
    q, k, extra = rand(3, 4, seed=1), rand(9, 4, seed=2), rand(2, 4, seed=3)
    got = info_nce(q, k, temperature=0.1, extra_negatives=extra, label_offset=3, reduction="none")
    assert torch.allclose(got, naive_rows(q, torch.cat([k, extra]), 0.1, offset=3), atol=1e-10)


def test_false_negative_mask_matches_naive_and_never_drops_positive():
    q, k = rand(4, 4, seed=1), rand(6, 4, seed=2)
    fn = torch.rand(4, 6, generator=torch.Generator().manual_seed(5)) < 0.4
    fn[0, 2] = True  # the positive of row 0 at offset 2: must stay in
    got = info_nce(q, k, temperature=0.1, false_negative_mask=fn, label_offset=2, reduction="none")
    assert torch.allclose(got, naive_rows(q, k, 0.1, offset=2, fn_mask=fn), atol=1e-10)
    unmasked = info_nce(q, k, temperature=0.1, label_offset=2, reduction="none")
    assert not torch.allclose(got, unmasked)


def test_positive_mask_matches_naive():
    q, k = rand(4, 4, seed=1), rand(6, 4, seed=2)
    pos = torch.zeros(4, 6, dtype=torch.bool)
    pos[torch.arange(4), torch.arange(4)] = True
    pos[0, 5] = pos[2, 4] = True
    got = info_nce(q, k, temperature=0.2, positive_mask=pos, reduction="none")
    assert torch.allclose(got, naive_rows(q, k, 0.2, pos_mask=pos), atol=1e-10)
    with pytest.raises(ValueError, match="without any positive"):
        info_nce(q, k, positive_mask=torch.zeros(4, 6, dtype=torch.bool))


def test_symmetric_local_matches_naive():
    img, txt = rand(5, 4, seed=1), rand(5, 4, seed=2)
    got = info_nce(img, txt, temperature=0.1, symmetric=True)
    expected = (naive_rows(img, txt, 0.1).mean() + naive_rows(txt, img, 0.1).mean()) / 2
    assert torch.allclose(got, expected, atol=1e-10)


def test_symmetric_gathered_matches_naive_and_full_batch():
    all_img, all_txt = rand(6, 4, seed=1), rand(6, 4, seed=2)
    fn = duplicate_mask(torch.tensor([0, 1, 0, 2, 3, 1]), torch.tensor([0, 1, 0, 2, 3, 1]))
    losses = []
    for r in range(3):  # three "ranks" of 2 rows each
        sl = slice(2 * r, 2 * r + 2)
        got = info_nce(all_img[sl], all_txt, all_queries=all_img, symmetric=True, temperature=0.1,
                       label_offset=2 * r, false_negative_mask=fn[sl])
        fwd = naive_rows(all_img[sl], all_txt, 0.1, offset=2 * r, fn_mask=fn[sl])
        rev = naive_rows(all_txt[sl], all_img, 0.1, offset=2 * r, fn_mask=fn[sl])
        assert torch.allclose(got, (fwd.mean() + rev.mean()) / 2, atol=1e-10)
        losses.append(got)
    full = info_nce(all_img, all_txt, symmetric=True, temperature=0.1, false_negative_mask=fn)
    assert torch.allclose(torch.stack(losses).mean(), full, atol=1e-10)


def test_symmetric_extra_negatives_only_forward():
    img, txt, neg = rand(3, 4, seed=1), rand(3, 4, seed=2), rand(2, 4, seed=3)
    got = info_nce(img, txt, extra_negatives=neg, symmetric=True, temperature=0.1)
    expected = (naive_rows(img, torch.cat([txt, neg]), 0.1).mean() + naive_rows(txt, img, 0.1).mean()) / 2
    assert torch.allclose(got, expected, atol=1e-10)


def test_symmetric_gathered_without_all_queries_errors():
    with pytest.raises(ValueError, match="all_queries"):
        info_nce(rand(2, 4), rand(6, 4), symmetric=True, label_offset=2)
    with pytest.raises(ValueError, match="paired"):
        info_nce(rand(2, 4), rand(6, 4), symmetric=True, all_queries=rand(4, 4))


def test_all_equal_embeddings_give_log_batch():
    x = torch.ones(6, 3)
    assert torch.allclose(info_nce(x, x, temperature=0.07), torch.tensor(math.log(6)), atol=1e-6)
    neg = torch.ones(4, 3)
    assert torch.allclose(info_nce(x, x, extra_negatives=neg), torch.tensor(math.log(10)), atol=1e-6)
    loss = info_nce(x, x)
    assert abs(float(mutual_information_lower_bound(loss, 6))) < 1e-6


def test_float32_and_grad_flow():
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    loss = info_nce(q, k)
    loss.backward()
    assert loss.dtype == torch.float32
    assert q.grad is not None and k.grad is not None and q.grad.abs().sum() > 0


def test_learnable_temperature_gets_gradient():
    temperature = LearnableTemperature(0.07)
    loss = info_nce(torch.randn(4, 8), torch.randn(4, 8), logit_scale=temperature(), symmetric=True)
    loss.backward()
    grad = temperature.log_scale.grad
    assert grad is not None and grad.abs() > 0
    assert temperature.temperature == pytest.approx(0.07, rel=1e-5)
    # same value as the functional form with a fixed temperature
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.allclose(info_nce(q, k, logit_scale=temperature(), symmetric=True),
                          info_nce(q, k, temperature=0.07, symmetric=True), atol=1e-5)


def test_learnable_temperature_clamps():
    t = LearnableTemperature(init=0.07, max_logit_scale=100)
    assert torch.allclose(t(), torch.tensor(1 / 0.07))
    with torch.no_grad():
        t.log_scale.fill_(math.log(1000.0))
    scale = t()
    assert torch.allclose(scale, torch.tensor(100.0))
    scale.backward()
    assert t.log_scale.grad == 0  # no gradient past the cap
    t.clamp_()
    assert torch.allclose(t.log_scale, torch.tensor(math.log(100.0)))
    with pytest.raises(ValueError, match="max_logit_scale"):
        LearnableTemperature(init=0.001, max_logit_scale=100)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan")])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        info_nce(rand(3, 4), rand(3, 4), temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(rand(3, 4), rand(3, 4), temperature=torch.tensor(bad))


def test_batch_of_one():
    with pytest.raises(ValueError, match="no negatives: use batch_size >= 2 or add negatives"):
        info_nce(rand(1, 4), rand(1, 4))
    loss = info_nce(rand(1, 4), rand(1, 4), extra_negatives=rand(2, 4, seed=5))
    assert torch.isfinite(loss)


def test_shape_errors():
    with pytest.raises(ValueError, match="embedding dim"):
        info_nce(rand(3, 4), rand(3, 5))
    with pytest.raises(ValueError, match="embedding dim"):
        info_nce(rand(3, 4), rand(3, 4), extra_negatives=rand(2, 3))
    with pytest.raises(ValueError, match="2-D"):
        info_nce(rand(3), rand(3, 4))
    with pytest.raises(ValueError, match="positive"):
        info_nce(rand(4, 4), rand(3, 4))  # fewer keys than queries
    with pytest.raises(ValueError, match="label_offset"):
        info_nce(rand(3, 4), rand(6, 4), label_offset=4)
    with pytest.raises(ValueError, match="false_negative_mask"):
        info_nce(rand(3, 4), rand(3, 4), false_negative_mask=torch.zeros(3, 4, dtype=torch.bool))


def test_duplicate_mask_equals_removing_the_duplicate_column():
    texts = ["A cat sits.", "a dog runs", "a  CAT sits.", "birds fly"]
    ids = text_ids(texts)
    assert ids[0] == ids[2] and len(set(ids.tolist())) == 3
    q, k = rand(4, 4, seed=1), rand(4, 4, seed=2)
    k[2] = k[0]  # the duplicate sentence embeds identically
    mask = duplicate_mask(ids, ids)
    expected_mask = torch.zeros(4, 4, dtype=torch.bool)
    expected_mask[0, 2] = expected_mask[2, 0] = True
    assert torch.equal(mask, expected_mask)
    masked = info_nce(q, k, temperature=0.1, false_negative_mask=mask, reduction="none")
    # row 0 without column 2, row 2 without column 0, other rows untouched
    row0 = info_nce(q[[0]], k[[0, 1, 3]], temperature=0.1)
    row2 = info_nce(q[[2]], k[[2, 1, 3]], temperature=0.1)
    plain = info_nce(q, k, temperature=0.1, reduction="none")
    assert torch.allclose(masked, torch.stack([row0, plain[1], row2, plain[3]]), atol=1e-10)
    assert not torch.allclose(masked, plain)


def test_duplicate_mask_with_extra_columns_and_offset():
    pos_ids = torch.tensor([7, 8])
    cols = torch.tensor([1, 7, 8, 9, 7, 8])  # gathered keys (offset 1), then two extra negatives
    mask = duplicate_mask(pos_ids, cols, label_offset=1)
    assert mask.tolist() == [[False, False, False, False, True, False], [False, False, False, False, False, True]]
    with pytest.raises(ValueError, match="label_offset"):
        duplicate_mask(pos_ids, cols, label_offset=5)


def test_contrastive_margin_loss_hand_computed():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    d1 = 1.0  # orthogonal: 1 - cos = 1
    d2 = 1 - 1 / math.sqrt(2)
    # similar pairs: d^2 / 2
    got = contrastive_margin_loss(a, b, torch.tensor([1, 1]), reduction="none")
    assert torch.allclose(got, torch.tensor([0.5 * d1**2, 0.5 * d2**2]))
    # dissimilar pairs: max(0, m - d)^2 / 2 with m = 0.5
    got = contrastive_margin_loss(a, b, torch.tensor([0, 0]), margin=0.5)
    assert torch.allclose(got, torch.tensor((0.0 + 0.5 * (0.5 - d2) ** 2) / 2))
    # euclidean: distance 5
    got = contrastive_margin_loss(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]), torch.tensor([0]), margin=6.0,
                                  distance="euclidean")
    assert torch.allclose(got, torch.tensor(0.5))
    with pytest.raises(ValueError, match="shape"):
        contrastive_margin_loss(a, b[:1], torch.tensor([1]))
    with pytest.raises(ValueError, match="distance"):
        contrastive_margin_loss(a, b, torch.tensor([1, 1]), distance="manhattan")


def test_triplet_loss_hand_computed():
    anchor = torch.zeros(1, 2)
    pos = torch.tensor([[1.0, 0.0]])
    far, near = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.5]])
    assert triplet_loss(anchor, pos, far, margin=0.5, distance="euclidean") == 0  # 1 - 2 + 0.5 < 0
    assert torch.allclose(triplet_loss(anchor, pos, far, margin=1.5, distance="euclidean"), torch.tensor(0.5))
    assert torch.allclose(triplet_loss(anchor, pos, near, margin=0.2, distance="squared_euclidean"),
                          torch.tensor(1 - 0.25 + 0.2))
    a, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    expected = max(0.0, (1 - 1 / math.sqrt(2)) - 1.0 + 0.8)
    assert torch.allclose(triplet_loss(a, p, n, margin=0.8, distance="cosine"), torch.tensor(expected))
    with pytest.raises(ValueError, match="equal shapes"):
        triplet_loss(anchor, pos, torch.zeros(2, 2))


def test_mutual_information_lower_bound():
    assert mutual_information_lower_bound(1.0, 8) == pytest.approx(math.log(8) - 1.0)
    with pytest.raises(ValueError):
        mutual_information_lower_bound(1.0, 0)
