"""Denoising autoencoder: each corruption does what it says, the loss against a naive per-pixel reference, and a
tiny run through the real trainer whose reconstruction error goes down, evaluated and exported like every image
method."""

from __future__ import annotations

import json
import math

import pytest
import torch
from image_ssl_recipes import image_recipe

from mmssl.errors import RecipeError
from mmssl.losses.denoising import corrupt, denoising_loss
from mmssl.models.vision import load_backbone
from mmssl.recipes import parse_recipe
from mmssl.train.loop import train


def test_masking_and_salt_and_pepper_corrupt_the_asked_fraction_of_pixels():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 64, 64, generator=g) * 0.5 + 0.25  # never exactly 0 or 1
    masked, mask = corrupt(images, "masking", 0.3, torch.Generator().manual_seed(1))
    assert mask.shape == (8, 1, 64, 64) and float(mask.mean()) == pytest.approx(0.3, abs=0.01)
    hit = mask.bool().expand_as(images)
    assert bool((masked[hit] == 0).all()) and torch.equal(masked[~hit], images[~hit])  # whole pixels, all channels
    salted, mask = corrupt(images, "salt_pepper", 0.2, torch.Generator().manual_seed(1))
    hit = mask.bool().expand_as(images)
    values = salted[hit]
    assert float(mask.mean()) == pytest.approx(0.2, abs=0.01) and torch.equal(salted[~hit], images[~hit])
    assert bool(((values == 0) | (values == 1)).all()) and float(values.mean()) == pytest.approx(0.5, abs=0.03)
    again, _ = corrupt(images, "salt_pepper", 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(again, salted)  # a seeded generator reproduces the corruption


def test_gaussian_noise_has_the_asked_spread_and_stays_in_range():
    grey = torch.full((4, 3, 64, 64), 0.5)
    noisy, mask = corrupt(grey, "gaussian", 0.1, torch.Generator().manual_seed(0))
    assert float((noisy - grey).std()) == pytest.approx(0.1, rel=0.03) and bool(mask.all())
    clipped, _ = corrupt(grey, "gaussian", 1.0, torch.Generator().manual_seed(0))
    assert float(clipped.min()) == 0 and float(clipped.max()) == 1


def naive_loss(prediction, clean, corrupted, alpha, beta) -> float:
    b, c, h, w = clean.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                error = sum(float(prediction[i, k, y, x] - clean[i, k, y, x]) ** 2 for k in range(c)) / c
                total += error * (alpha if corrupted[i, 0, y, x] else beta)
    return total / (b * h * w)


def test_loss_matches_the_naive_reference_with_emphasis():
    g = torch.Generator().manual_seed(0)
    prediction, clean = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    corrupted = (torch.rand(2, 1, 5, 4, generator=g) < 0.4).float()
    for alpha, beta in ((1.0, 1.0), (1.0, 0.0), (2.0, 0.5)):
        got = float(denoising_loss(prediction, clean, corrupted, alpha, beta))
        assert got == pytest.approx(naive_loss(prediction, clean, corrupted, alpha, beta), rel=1e-5)


@pytest.mark.slow
def test_trains_evaluates_and_exports(tmp_path):
    out = tmp_path / "run"
    raw = image_recipe(out, "denoising_autoencoder", corruption="masking", corruption_level=0.3, output_size=8)
    raw["train"].update(max_steps=30, log_every=3, learning_rate=1e-2)
    metrics = train(parse_recipe(raw))
    logged = [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]
    # fixed seed: the reconstruction error falls by more than a third over 30 steps
    assert sum(logged[-3:]) / 3 < 0.67 * logged[0], logged
    result = metrics["eval"]
    assert 0 <= result["knn_top1"] <= 1 and math.isfinite(result["random_init_knn_top1"]) and result["collapsed"] == 0
    backbone = load_backbone(str(out))  # the exported encoder: plain timm, no decoder
    assert backbone(torch.zeros(2, 3, 16, 16)).shape == (2, backbone.dim)


def test_an_unknown_corruption_is_refused_by_name(tmp_path):
    raw = image_recipe(tmp_path / "run", "denoising_autoencoder", corruption="blur")
    with pytest.raises(RecipeError, match=r"objective\.corruption: 'blur' is not allowed.*masking"):
        parse_recipe(raw)


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    """The corruption draws from torch's generator, which the checkpoint restores: a run stopped after a
    checkpoint and resumed ends with exactly the weights of an unbroken run."""
    from clirun import straight_and_resumed_here

    raw = image_recipe(tmp_path / "unused", "denoising_autoencoder", eval_before=False, linear_probe=False,
                       corruption="salt_pepper", output_size=8)
    raw["train"].update(max_steps=16, save_every=4, keep_checkpoints=10)
    a, b, stopped_at = straight_and_resumed_here(raw, tmp_path, 4, 16)
    assert a.keys() == b.keys() and any("decoder" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
