"""k-means for DeepCluster: finds separated clusters, is deterministic for a seed, and fills empty clusters."""

from __future__ import annotations

import torch

from mmssl.models.kmeans import kmeans, torch_kmeans


def blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(20)
    return centres[truth] + 0.3 * torch.randn(60, 2), truth


def test_separated_blobs_become_clusters_and_a_seed_fixes_the_result():
    x, truth = blobs()
    centroids, assign = kmeans(x, 3, seed=0, backend="torch")
    for blob in range(3):
        assert len(set(assign[truth == blob].tolist())) == 1  # a blob is one cluster
    assert len(set(assign.tolist())) == 3
    again = torch_kmeans(x, 3, seed=0)
    assert torch.equal(again[0], centroids) and torch.equal(again[1], assign)
    six = torch_kmeans(x, 6, seed=1)[1]
    assert all(len(set(six[truth == b].tolist()) & set(six[truth != b].tolist())) == 0 for b in range(3))


def test_empty_clusters_are_refilled_by_splitting_a_non_empty_one(monkeypatch):
    """Seeded with three identical centres (as random seeding can be), two clusters start empty: ties go to the
    first. DeepCluster's rule splits non-empty clusters until none is empty."""
    from mmssl.models import kmeans as module

    x, truth = blobs()
    monkeypatch.setattr(module, "_initial_centroids", lambda x, k, g: x[torch.tensor([0, 0, 0, 25])].clone())
    _, assign = torch_kmeans(x, 4, seed=0)
    counts = torch.bincount(assign, minlength=4)
    assert (counts > 0).all(), counts.tolist()
    assert module.assign_to(x, x[torch.tensor([0, 0, 0, 25])]).unique().tolist() == [0, 3]  # the empty start


def test_bad_k_is_refused():
    import pytest

    with pytest.raises(ValueError, match="1 <= k"):
        kmeans(torch.randn(4, 2), 5)
