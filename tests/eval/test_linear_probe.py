"""Linear probe: separable data is learned, random labels are not, the test set never steers it."""

from __future__ import annotations

import time

import pytest
import torch

from mmssl.eval.knn import knn_accuracy
from mmssl.eval.linear_probe import linear_probe_accuracy


def direction_data(n, dim=64, num_classes=4, seed=0):
    """Class = which of `num_classes` intervals one hidden direction falls in; 63 other dims of noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = torch.bucketize(x[:, 0].contiguous(), torch.tensor([-0.6745, 0.0, 0.6745])[: num_classes - 1])
    rotation = torch.linalg.qr(torch.randn(dim, dim, generator=g)).Q
    return x @ rotation * 3.0 + 7.0, y  # rotated, scaled and shifted: standardisation must cope


def test_linearly_separable_data_is_learned_where_knn_is_not():
    x, y = direction_data(1500)
    out = linear_probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:])
    assert out["linear_probe_top1"] > 0.85 and out["linear_probe_train_top1"] > 0.9
    assert knn_accuracy(x[:1000], y[:1000], x[1000:], y[1000:])["knn_top1"] < 0.65  # the noise dims dominate
    assert out["linear_probe_num_train"] == 1000 and out["linear_probe_num_test"] == 500


def test_separable_clusters_reach_full_accuracy():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(10, 128, generator=g)
    ytr, yte = torch.arange(10).repeat(60), torch.arange(10).repeat(20)
    xtr = centres[ytr] + 0.3 * torch.randn(600, 128, generator=g)
    xte = centres[yte] + 0.3 * torch.randn(200, 128, generator=g)
    out = linear_probe_accuracy(xtr, ytr, xte, yte)
    assert out["linear_probe_top1"] == 1.0 and out["linear_probe_top5"] == 1.0


def test_random_labels_give_chance_on_test():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2000, 64, generator=g), torch.randint(0, 10, (2000,), generator=g)
    out = linear_probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:])
    assert abs(out["linear_probe_top1"] - 0.1) < 0.04
    assert abs(out["linear_probe_val_top1"] - 0.1) < 0.07


def test_settings_are_chosen_on_train_only_and_reported():
    x, y = direction_data(1500, seed=3)
    out = linear_probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:])
    shuffled = linear_probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:][torch.randperm(500)])
    for key in ("weight_decay", "val_top1", "train_top1", "iterations"):
        assert shuffled[f"linear_probe_{key}"] == out[f"linear_probe_{key}"]
    assert shuffled["linear_probe_top1"] < out["linear_probe_top1"] - 0.3
    assert out["linear_probe_weight_decay"] in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    single = linear_probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], weight_decays=[1e-2])
    assert "linear_probe_val_top1" not in single and single["linear_probe_weight_decay"] == 1e-2


def test_deterministic_and_seed_only_moves_the_split():
    x, y = direction_data(800, seed=4)
    a = linear_probe_accuracy(x[:600], y[:600], x[600:], y[600:], seed=0)
    assert a == linear_probe_accuracy(x[:600], y[:600], x[600:], y[600:], seed=0)
    single = dict(weight_decays=[1e-3])
    assert linear_probe_accuracy(x[:600], y[:600], x[600:], y[600:], seed=0, **single) == linear_probe_accuracy(
        x[:600], y[:600], x[600:], y[600:], seed=5, **single
    )


def test_rows_labelled_minus_one_are_ignored():
    x, y = direction_data(900, seed=5)
    base = linear_probe_accuracy(x[:600], y[:600], x[600:], y[600:], weight_decays=[1e-3])
    junk = torch.randn(100, 64) * 50
    out = linear_probe_accuracy(
        torch.cat([x[:600], junk]), torch.cat([y[:600], torch.full((100,), -1)]),
        torch.cat([x[600:], junk]), torch.cat([y[600:], torch.full((100,), -1)]), weight_decays=[1e-3],
    )
    assert out["linear_probe_num_train"] == 600 and out["linear_probe_num_test"] == 300
    assert out["linear_probe_top1"] == pytest.approx(base["linear_probe_top1"], abs=0.01)


def test_2000_by_512_is_fast():
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(10, 512, generator=g) * 0.15
    y = torch.randint(0, 10, (2500,), generator=g)
    x = centres[y] + torch.randn(2500, 512, generator=g)
    start = time.perf_counter()
    out = linear_probe_accuracy(x[:2000], y[:2000], x[2000:], y[2000:])
    assert time.perf_counter() - start < 20  # about 1 s alone on 2 cores; generous for a loaded machine
    assert 0.3 < out["linear_probe_top1"] < 1.0


def test_bad_settings_are_refused():
    x, y = direction_data(100)
    with pytest.raises(ValueError):
        linear_probe_accuracy(x, y, x, y, weight_decays=[0.0])
    with pytest.raises(ValueError, match="too few"):
        linear_probe_accuracy(x[:2], y[:2], x, y)


def test_works_under_inference_mode():
    x, y = direction_data(600, seed=7)
    ref = linear_probe_accuracy(x[:400], y[:400], x[400:], y[400:])
    with torch.inference_mode():
        x, y = x * 1, y * 1  # inference tensors, as an eval loop under inference_mode would hand over
        assert linear_probe_accuracy(x[:400], y[:400], x[400:], y[400:]) == ref
