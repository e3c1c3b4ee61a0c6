"""Weighted kNN accuracy against a naive per-row loop, and on data whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from mmssl.eval.knn import knn_accuracy, knn_scores


def naive_predictions(train, ytrain, test, k, temperature, num_classes, weighting="exp"):
    """Explicit loop in float64: sort every train row by cosine, vote, rank classes (ties: lower index)."""
    train = torch.nn.functional.normalize(train.double(), dim=-1)
    test = torch.nn.functional.normalize(test.double(), dim=-1)
    ranked = []
    for q in test:
        sims = sorted(((float(q @ t), j) for j, t in enumerate(train)), reverse=True)[:k]
        scores = [0.0] * num_classes
        for sim, j in sims:
            scores[int(ytrain[j])] += math.exp(sim / temperature) if weighting == "exp" else 1.0
        ranked.append(sorted(range(num_classes), key=lambda c: (-scores[c], c)))
    return torch.tensor(ranked)


def random_data(n_train=300, n_test=60, dim=16, num_classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_train, dim, generator=g), torch.randint(0, num_classes, (n_train,), generator=g),
            torch.randn(n_test, dim, generator=g), torch.randint(0, num_classes, (n_test,), generator=g))


@pytest.mark.parametrize(
    ("k", "temperature", "weighting", "chunk_size"),
    [(20, 0.07, "exp", None), (200, 0.07, "exp", 7), (5, 0.5, "exp", 1), (15, 0.07, "uniform", 13),
     (1, 0.07, "exp", None), (400, 0.07, "exp", None)],  # k above the 300 train rows: all of them vote
)
def test_predictions_equal_naive_loop(k, temperature, weighting, chunk_size):
    xtr, ytr, xte, yte = random_data()
    ranked = naive_predictions(xtr, ytr, xte, k, temperature, 7, weighting)
    scores = knn_scores(xtr, ytr, xte, 7, k, temperature, weighting, chunk_size)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    assert torch.equal(order, ranked)  # every class's rank, ties (e.g. no votes) to the lower index
    out = knn_accuracy(xtr, ytr, xte, yte, k=k, temperature=temperature, weighting=weighting, chunk_size=chunk_size)
    assert out["knn_top1"] == pytest.approx((ranked[:, 0] == yte).double().mean().item())
    assert out["knn_top5"] == pytest.approx((ranked[:, :5] == yte[:, None]).any(1).double().mean().item())
    assert out["knn_k"] == min(k, 300) and out["knn_num_train"] == 300 and out["knn_num_test"] == 60


def test_k1_is_the_nearest_neighbours_label_and_k_is_clamped():
    xtr, ytr, xte, yte = random_data(n_train=50)
    cos = torch.nn.functional.normalize(xte, dim=-1) @ torch.nn.functional.normalize(xtr, dim=-1).T
    nearest = ytr[cos.argmax(1)]
    assert knn_accuracy(xtr, ytr, xte, yte, k=1)["knn_top1"] == pytest.approx((nearest == yte).float().mean().item())
    assert knn_accuracy(xtr, ytr, xte, yte, k=1000)["knn_k"] == 50


def test_tied_classes_go_to_the_lower_index():
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    scores = knn_scores(train, torch.tensor([5, 2, 2, 5]), torch.tensor([[1.0, 1.0]]), 8, k=4)
    assert scores[0, 2] == scores[0, 5] > 0
    out = knn_accuracy(train, torch.tensor([5, 2, 2, 5]), torch.tensor([[1.0, 1.0], [1.0, 1.0]]), [2, 5], k=4)
    assert out["knn_top1"] == 0.5 and out["knn_top5"] == 1.0


def test_rows_labelled_minus_one_are_ignored_on_both_sides():
    xtr, ytr, xte, yte = random_data()
    base = knn_accuracy(xtr, ytr, xte, yte, k=10)
    # unlabelled train rows sitting exactly on the test rows would be every test row's nearest neighbour
    xtr2, ytr2 = torch.cat([xtr, xte]), torch.cat([ytr, torch.full((60,), -1)])
    xte2, yte2 = torch.cat([xte, xtr[:25]]), torch.cat([yte, torch.full((25,), -1)])
    out = knn_accuracy(xtr2, ytr2, xte2, yte2, k=10)
    assert out == base
    # the same rows with (wrong) real labels do change the answer, so the check above can fail
    assert knn_accuracy(xtr2, torch.cat([ytr, (yte + 1) % 7]), xte, yte, k=10)["knn_top1"] < base["knn_top1"]


def test_separable_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(10, 32, generator=g) * 5
    ytr, yte = torch.arange(10).repeat(50), torch.arange(10).repeat(20)
    xtr = centres[ytr] + torch.randn(500, 32, generator=g)
    xte = centres[yte] + torch.randn(200, 32, generator=g)
    out = knn_accuracy(xtr, ytr, xte, yte)
    assert out["knn_top1"] == 1.0 and out["knn_top5"] == 1.0


def test_random_labels_give_chance():
    xtr, ytr, xte, yte = random_data(n_train=2000, n_test=1000, dim=32, num_classes=10, seed=2)
    out = knn_accuracy(xtr, ytr, xte, yte)
    assert abs(out["knn_top1"] - 0.1) < 0.04  # 4 binomial standard deviations
    assert abs(out["knn_top5"] - 0.5) < 0.07


def test_top5_only_with_more_than_five_classes_and_deterministic():
    xtr, ytr, xte, yte = random_data(num_classes=5)
    out = knn_accuracy(xtr, ytr, xte, yte)
    assert "knn_top5" not in out and out == knn_accuracy(xtr, ytr, xte, yte)
    assert "knn_top5" in knn_accuracy(xtr, ytr, xte, yte, num_classes=6)


def test_small_temperature_does_not_overflow():
    xtr, ytr, xte, yte = random_data()
    scores = knn_scores(xtr, ytr, xte, 7, k=20, temperature=0.001)
    assert torch.isfinite(scores).all()
    ranked = naive_predictions(xtr, ytr, xte, 1, 0.07, 7)  # at T -> 0 the nearest neighbour decides
    assert torch.equal(scores.argmax(1), ranked[:, 0])


def test_bad_inputs_are_refused():
    xtr, ytr, xte, yte = random_data()
    with pytest.raises(ValueError, match="out of range"):
        knn_accuracy(xtr, ytr, xte, yte, num_classes=3)
    with pytest.raises(ValueError, match="labelled test row"):
        knn_accuracy(xtr, ytr, xte, torch.full((60,), -1))
    with pytest.raises(ValueError, match="N labels"):
        knn_accuracy(xtr, ytr[:10], xte, yte)
