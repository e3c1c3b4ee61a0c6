"""SimCLR: a tiny run with mild views whose loss visibly goes down, and, with `bank_negatives`, negatives drawn
from a memory bank whose rows of the batch's images (and no others) move."""

from __future__ import annotations

import pytest

import math

import torch
from image_ssl_recipes import image_objective, image_recipe, losses

from mmssl.recipes import parse_recipe
from mmssl.train.loop import train


@pytest.mark.slow
def test_simclr_loss_goes_down(tmp_path):
    """Mild views (crops only) so that 60 steps of a tiny ResNet on 16 px images visibly learn; 0.5-0.7 nats
    below the first logged loss for seeds 0-2, asserted with margin, averaged over the last three logs."""
    out = tmp_path / "run"
    views = {"crop_scale": [0.5, 1.0], "color_jitter": 0.0, "grayscale": 0.0}
    raw = image_recipe(out, "simclr", temperature=0.5, views=views, eval_max_images=40)
    raw["train"].update(max_steps=60, log_every=5)
    train(parse_recipe(raw))
    values = losses(out)
    assert sum(values[-3:]) / 3 < values[0] - 0.3, values


@pytest.mark.slow
def test_simclr_draws_bank_negatives_and_moves_the_rows_of_its_batch(tmp_path):
    obj = image_objective(tmp_path, "simclr", bank_negatives=24)
    module = obj.module.train()
    before = module.bank.features.clone()
    batch = obj.prepare_batch({"index": torch.arange(3, 11)})
    seen = []
    original = module.bank.sample_shared
    module.bank.sample_shared = lambda num: seen.append(num) or original(num)
    loss = obj.step_loss(module, batch)["loss"]
    assert seen == [24] and math.isfinite(float(loss.detach()))
    moved = (module.bank.features != before).any(dim=1)
    assert moved[3:11].all() and not moved[:3].any() and not moved[11:].any()
    assert image_objective(tmp_path / "plain", "simclr").module.bank is None
