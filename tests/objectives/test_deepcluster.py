"""DeepCluster: pseudo-labels are reclustered once per epoch, and each new epoch brings a fresh classifier head,
seeded by the epoch, whose optimizer moments are forgotten while the backbone keeps its own."""

from __future__ import annotations

import pytest

import math

import torch
from image_ssl_recipes import image_objective


@pytest.mark.slow
def test_deepcluster_reclusters_each_epoch_and_resets_its_head(tmp_path):
    torch.manual_seed(0)
    obj = image_objective(tmp_path, "deepcluster", num_clusters=6, pca_dim=8)
    module = obj.module.train()
    batch = obj.prepare_batch({"index": torch.arange(16)})
    out = obj.step_loss(module, batch)
    labels = module.pseudo_labels.clone()
    assert int(module.labels_epoch) == 0 and labels.min() >= 0 and len(labels.unique()) == 6
    assert math.isfinite(float(out["loss"].detach())) and float(out["clusters_used"]) == 6
    head = module.head[0].weight.clone()
    obj.step_loss(module, batch)  # same epoch: same labels, no reset
    assert torch.equal(module.pseudo_labels, labels) and torch.equal(module.head[0].weight, head)
    with torch.no_grad():
        module.head[0].weight.add_(1.0)
    obj.set_epoch(1)
    obj.step_loss(module, batch)
    assert int(module.labels_epoch) == 1 and not torch.equal(module.head[0].weight, head + 1.0)  # a fresh head
    fresh = module.head[0].weight.clone()
    obj.set_epoch(2)
    obj.step_loss(module, batch)
    assert not torch.equal(module.head[0].weight, fresh)  # seeded by epoch: each epoch its own initialisation
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    obj.attach_optimizer(optimizer)
    obj.step_loss(module, batch)["loss"].backward()
    optimizer.step()
    head, body = list(module.head.parameters()), list(module.backbone.parameters())
    assert all(p in optimizer.state for p in head + body)
    obj.set_epoch(3)
    obj.step_loss(module, batch)  # a new head forgets its moments, the backbone keeps its own
    assert not any(p in optimizer.state for p in head) and all(p in optimizer.state for p in body)
