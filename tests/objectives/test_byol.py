"""BYOL: the target network gets no gradient, only the online branch and its predictor do, and the target follows
the online weights with the cosine momentum schedule (tau from 0.996 to 1)."""

from __future__ import annotations

import pytest
import torch
from image_ssl_recipes import image_objective


def test_byol_target_gets_no_gradient_and_follows_the_cosine_schedule(tmp_path):
    obj = image_objective(tmp_path, "byol", eval_before=False)
    module = obj.module
    batch = obj.prepare_batch(obj.collate(list(range(8))))
    out = obj.forward(module, batch)
    out["loss"].backward()
    target = list(module.target_backbone.parameters()) + list(module.target_projection.parameters())
    assert target and all(not p.requires_grad and p.grad is None for p in target)
    assert all(p.grad is not None for p in module.prediction.parameters())
    before = [p.detach().clone() for p in module.target_backbone.parameters()]
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(1.0)
    obj.after_optimizer_step(module, 0, 100)
    assert obj.tau == pytest.approx(0.996)
    moved = list(module.target_backbone.parameters())
    # tau = 0.996: the target moves 0.4% of the way to the online weights (which moved by +1)
    assert all(torch.allclose(m, b + 0.004 * (o - b), atol=1e-6)
               for m, b, o in zip(moved, before, module.backbone.parameters()))
    obj.after_optimizer_step(module, 50, 100)
    assert obj.tau == pytest.approx(0.998)
    obj.after_optimizer_step(module, 100, 100)
    assert obj.tau == pytest.approx(1.0)
