"""Collapse metrics on embeddings whose spread and rank are known."""

from __future__ import annotations

import math

import pytest
import torch

from mmssl.eval.collapse import COLLAPSE_THRESHOLD, collapse_metrics, is_collapsed
from mmssl.eval.embeddings import alignment, effective_rank, uniformity


def test_identical_vectors_are_collapsed():
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(0)).repeat(200, 1)
    m = collapse_metrics(x)
    assert m["feature_std"] == 0.0 and m["feature_std_sqrt_d"] == 0.0
    assert m["effective_rank"] == pytest.approx(1.0) and m["uniformity"] == pytest.approx(0.0, abs=1e-6)
    assert is_collapsed(m)


def test_nearly_identical_vectors_are_collapsed():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 64, generator=g) + 0.01 * torch.randn(500, 64, generator=g)
    assert is_collapsed(collapse_metrics(x))


@pytest.mark.parametrize("dim", [16, 128, 512])
def test_isotropic_gaussian_is_healthy(dim):
    x = torch.randn(4000, dim, generator=torch.Generator().manual_seed(dim))
    m = collapse_metrics(x)
    assert m["feature_std_sqrt_d"] == pytest.approx(1.0, abs=0.02)
    assert m["feature_std"] == pytest.approx(1 / math.sqrt(dim), rel=0.02)
    assert m["effective_rank"] > 0.75 * dim
    assert not is_collapsed(m)


def test_rank_two_embedding_has_effective_rank_two():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 2, generator=g) @ torch.randn(2, 256, generator=g)
    m = collapse_metrics(x)
    assert m["effective_rank"] == pytest.approx(2.0, abs=0.05)
    assert not is_collapsed(m)  # spread but low-dimensional: dimensional collapse shows in effective_rank only


def test_reuses_embedding_metrics_and_alignment_needs_a_second_view():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 32, generator=g), torch.randn(300, 32, generator=g)
    m = collapse_metrics(x, y)
    assert m["effective_rank"] == pytest.approx(effective_rank(x), rel=1e-6)
    assert m["uniformity"] == pytest.approx(uniformity(x), rel=1e-6)
    assert m["alignment"] == pytest.approx(alignment(x, y), rel=1e-6) and m["num_rows"] == 300
    assert "alignment" not in collapse_metrics(x)
    assert collapse_metrics(x, x)["alignment"] == pytest.approx(0.0, abs=1e-6)


def test_rows_are_subsampled_for_quadratic_metrics():
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(4))
    full, sub = collapse_metrics(x, max_samples=None), collapse_metrics(x, max_samples=500)
    assert sub["feature_std"] == full["feature_std"]  # std always uses every row
    assert sub["uniformity"] != full["uniformity"] and sub["uniformity"] == pytest.approx(full["uniformity"], abs=0.05)
    assert sub == collapse_metrics(x, max_samples=500)


def test_threshold_and_non_finite_features():
    assert COLLAPSE_THRESHOLD == 0.1
    assert is_collapsed({"feature_std_sqrt_d": 0.099}) and not is_collapsed({"feature_std_sqrt_d": 0.101})
    assert not is_collapsed({"feature_std_sqrt_d": 0.05}, threshold=0.01)
    x = torch.randn(10, 8)
    x[3, 2] = float("nan")
    m = collapse_metrics(x, x)
    assert math.isnan(m["feature_std"]) and math.isnan(m["alignment"]) and is_collapsed(m)
    with pytest.raises(ValueError):
        collapse_metrics(torch.randn(1, 8))
