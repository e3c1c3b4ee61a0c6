"""SwAV: the prototypes get no gradient while frozen and one afterwards, they stay on the unit sphere, and the
small crops (each drawn on its own) join the step."""

from __future__ import annotations

import pytest

import torch
from image_ssl_recipes import image_objective


@pytest.mark.slow
def test_swav_prototypes_get_no_gradient_while_frozen_and_small_crops_join_the_step(tmp_path):
    obj = image_objective(tmp_path, "swav", num_prototypes=8, small_crops=3, small_crop_size=8, freeze_prototypes_steps=5)
    module = obj.module.train()
    batch = obj.prepare_batch({"index": torch.arange(8)})
    assert batch["view1"].shape == (8, 3, 16, 16) and batch["small"].shape == (24, 3, 8, 8)
    assert not torch.equal(batch["small"][:8], batch["small"][8:16])  # each small crop draws its own
    for steps_done, frozen in ((0, True), (4, True), (5, False)):
        module.steps_done.fill_(steps_done)
        module.zero_grad(set_to_none=True)
        obj.step_loss(module, batch)["loss"].backward()
        assert (module.prototypes.weight.grad is None) == frozen, steps_done
        assert all(p.grad is not None for p in module.backbone.parameters() if p.requires_grad)
    assert torch.allclose(module.prototypes.weight.norm(dim=1), torch.ones(8), atol=1e-5)  # on the unit sphere
