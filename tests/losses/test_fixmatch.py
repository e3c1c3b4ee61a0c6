"""FixMatch's loss against a naive per-image reference: the supervised term, the confidence threshold on the weak
view's pseudo-label, lambda_u, and no gradient through the pseudo-labels (the weak logits)."""

from __future__ import annotations

import math

import pytest
import torch

from mmssl.losses.fixmatch import fixmatch_loss


def naive(labelled, labels, weak, strong, threshold, lambda_u) -> tuple[float, float, float]:
    def ce(logits, target) -> float:
        row = [float(v) for v in logits]
        top = max(row)
        return -(row[target] - top - math.log(sum(math.exp(v - top) for v in row)))

    supervised = sum(ce(labelled[i], int(labels[i])) for i in range(len(labels))) / len(labels)
    unlabelled, used = 0.0, 0
    for i in range(len(weak)):
        row = [float(v) for v in weak[i]]
        exps = [math.exp(v - max(row)) for v in row]
        probs = [e / sum(exps) for e in exps]
        best = max(range(len(probs)), key=probs.__getitem__)
        if probs[best] >= threshold:
            unlabelled += ce(strong[i], best)
            used += 1
    unlabelled /= len(weak)  # every unlabelled image counts in the mean, masked ones as zero
    return supervised + lambda_u * unlabelled, unlabelled, used / len(weak)


@pytest.mark.parametrize("threshold,lambda_u", [(0.95, 1.0), (0.6, 0.5), (0.0, 2.0), (1.0, 1.0)])
def test_matches_the_naive_reference(threshold, lambda_u):
    g = torch.Generator().manual_seed(0)
    labelled, labels = torch.randn(5, 4, generator=g), torch.randint(0, 4, (5,), generator=g)
    weak = torch.randn(12, 4, generator=g) * 3  # some rows confident, some not
    weak[0] = torch.tensor([9.0, 0.0, 0.0, 0.0])  # certainly above 0.95
    strong = torch.randn(12, 4, generator=g)
    out = fixmatch_loss(labelled, labels, weak, strong, threshold, lambda_u)
    loss, unlabelled, rate = naive(labelled, labels, weak, strong, threshold, lambda_u)
    assert float(out["loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(out["unlabelled_loss"]) == pytest.approx(unlabelled, rel=1e-5, abs=1e-7)
    assert float(out["mask_rate"]) == pytest.approx(rate)
    assert 0 < rate < 1 or threshold in (0.0, 1.0)


def test_the_pseudo_labels_carry_no_gradient_and_monitors_count_right():
    g = torch.Generator().manual_seed(1)
    labelled, labels = torch.randn(3, 3, generator=g, requires_grad=True), torch.tensor([0, 1, 2])
    weak = torch.tensor([[8.0, 0, 0], [0, 8.0, 0], [0.1, 0, 0], [0, 0, 8.0]], requires_grad=True)
    strong = torch.randn(4, 3, generator=g, requires_grad=True)
    truth = torch.tensor([0, 2, 0, -1])  # row 1's pseudo-label is wrong, row 3's truth unknown
    out = fixmatch_loss(labelled, labels, weak, strong, 0.95, 1.0, truth)
    out["loss"].backward()
    assert weak.grad is None  # only the strong view is trained towards the pseudo-labels
    assert bool((strong.grad[2] == 0).all()) and bool((strong.grad[[0, 1, 3]] != 0).any(dim=1).all())
    assert float(out["mask_rate"]) == pytest.approx(0.75)
    assert float(out["pseudo_label_accuracy"]) == pytest.approx(2 / 3)  # rows 0 and 2 right, of the 3 known
    assert float(out["confident_correct_rate"]) == pytest.approx(1 / 3)  # row 0 used and right; row 2 unused


def test_without_unlabelled_logits_it_is_plain_cross_entropy():
    logits, labels = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3, 0, 1])
    out = fixmatch_loss(logits, labels, None, None)
    assert torch.allclose(out["loss"], torch.nn.functional.cross_entropy(logits, labels)) and "mask_rate" not in out
