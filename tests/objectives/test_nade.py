"""NADE for images: the one-pass negative log-likelihood against a naive per-pixel loop, a normalised distribution
(the probabilities of every image of 8 pixels sum to 1), the per-pixel Bernoulli baseline's bits/dim on known data,
pixel-by-pixel sampling that draws from the model, a tiny run through the real trainer whose likelihood improves
and whose export reloads as a plain torch encoder, a stopped run resuming to identical weights, and bad recipes
refused with one message."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from image_ssl_recipes import image_recipe

from mmssl.errors import RecipeError
from mmssl.losses.nade import bernoulli_baseline, bernoulli_nll, bits_per_dim, nade_nll, nade_sample
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def nade_tensors(pixels=6, hidden=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(hidden, pixels, generator=g) * scale, torch.randn(hidden, generator=g) * 0.5,
            torch.randn(pixels, hidden, generator=g) * scale, torch.randn(pixels, generator=g) * 0.5)


def naive_nll(v: list[float], weight, c, out_weight, b) -> float:
    """-log p(v) pixel by pixel, straight from the paper: h_d = sigmoid(c + sum_{k<d} W[:, k] v_k)."""
    (hidden, pixels), total = weight.shape, 0.0
    for d in range(pixels):
        h = [sigmoid(float(c[j]) + sum(float(weight[j, k]) * v[k] for k in range(d))) for j in range(hidden)]
        p = sigmoid(float(b[d]) + sum(float(out_weight[d, j]) * h[j] for j in range(hidden)))
        total -= math.log(p) if v[d] else math.log(1 - p)
    return total


def test_the_one_pass_nll_equals_a_naive_per_pixel_loop_and_its_gradient_flows():
    params = [t.requires_grad_() for t in nade_tensors()]
    v = (torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    got = nade_nll(v, *params)
    fixed = [t.detach() for t in params]
    for n in range(5):
        assert float(got[n].detach()) == pytest.approx(naive_nll(v[n].tolist(), *fixed), rel=1e-5)
    got.sum().backward()
    assert float(params[0].grad[:, -1].abs().max()) == 0  # the last pixel conditions nothing
    assert all(float(p.grad.abs().sum()) > 0 for p in params)


def test_the_probabilities_of_every_image_of_8_pixels_sum_to_one():
    params = nade_tensors(pixels=8, hidden=5, seed=3, scale=2.0)  # strong weights: far from independent pixels
    images = torch.tensor(list(itertools.product((0.0, 1.0), repeat=8)))  # all 256
    p = torch.exp(-nade_nll(images, *params).double())
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6) and float(p.max()) > 3 / 256


def test_the_bernoulli_baseline_on_known_data():
    # 4 training images of 2 pixels: the first on in 3 of them, the second never; add-one smoothing
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    p = bernoulli_baseline(train)
    assert p.tolist() == pytest.approx([4 / 6, 1 / 6])
    held_out = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    nll = bernoulli_nll(held_out, p)
    assert nll.tolist() == pytest.approx([-math.log(4 / 6 * 1 / 6), -math.log(2 / 6 * 5 / 6)])
    # bits per pixel: the mean over images, / (2 pixels x ln 2)
    expected = (-math.log2(4 / 6 * 1 / 6) - math.log2(2 / 6 * 5 / 6)) / 2 / 2
    assert bits_per_dim(nll.mean(), 2) == pytest.approx(expected)
    # a fair coin per pixel costs exactly one bit
    assert bits_per_dim(bernoulli_nll(held_out, torch.full((2,), 0.5)).mean(), 2) == pytest.approx(1.0)


def test_sampling_draws_from_the_model():
    weight, c, out_weight, b = nade_tensors(pixels=6, hidden=4, scale=0.0)
    b = torch.tensor([30.0, -30.0, 30.0, -30.0, 0.0, 0.0])  # strong biases, no interactions: pixels 4 and 5 fair coins
    g = torch.Generator().manual_seed(0)
    samples, p = nade_sample(4000, weight, c, out_weight, b, generator=g)
    assert torch.equal(samples[:, :4].mean(dim=0), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert samples[:, 4:].mean(dim=0).tolist() == pytest.approx([0.5, 0.5], abs=0.03)
    # with interactions: pixel 1 copies pixel 0 through the hidden units (the conditionals are the model's)
    weight, c, out_weight, b = torch.zeros(1, 2), torch.tensor([-15.0]), torch.zeros(2, 1), torch.tensor([0.0, -15.0])
    weight[0, 0], out_weight[1, 0] = 30.0, 30.0
    samples, p = nade_sample(4000, weight, c, out_weight, b, generator=g)
    assert torch.equal(samples[:, 1], samples[:, 0]) and float(samples[:, 0].mean()) == pytest.approx(0.5, abs=0.03)
    # each pixel was drawn with the probability the one-pass logits give for the sampled prefix
    params = nade_tensors(pixels=5, hidden=3, seed=4)
    samples, p = nade_sample(16, *params, generator=g)
    expected = torch.exp(-nade_nll(samples, *params))
    assert torch.allclose(torch.where(samples.bool(), p, 1 - p).prod(dim=1), expected, rtol=1e-5)


def nade_recipe(tmp_path, **objective) -> dict:
    raw = image_recipe(tmp_path / "run", "nade", **{"eval_before": False, "hidden": 32, "samples": 16, **objective})
    del raw["model"]
    raw["objective"].pop("projection_dim"), raw["objective"].pop("hidden_dim")
    raw["train"].update(optimizer="adamw", learning_rate=3e-2, weight_decay=0.0, scheduler="constant")
    return raw


@pytest.mark.slow
def test_trains_evaluates_and_exports_a_plain_torch_encoder_and_density(tmp_path):
    from PIL import Image
    from safetensors.torch import load_file

    from mmssl.objectives.nade import load_nade
    from mmssl.train.loop import train

    raw = nade_recipe(tmp_path, eval_before=True, linear_probe=False)
    raw["train"].update(max_steps=30, log_every=3)
    out = tmp_path / "run"
    metrics = train(parse_recipe(raw))
    logged = [e["bits_per_dim"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    # fixed seed: the training bits/dim falls by a third (0.59 -> 0.37) from about the per-pixel baseline
    assert sum(logged[-3:]) / 3 < 0.75 * logged[0], logged
    result = metrics["eval"]
    assert 0 <= result["knn_top1"] <= 1 and math.isfinite(result["random_init_knn_top1"]) and result["collapsed"] == 0
    # held out, the model beats independent pixels fitted on the training images
    assert result["bits_per_dim"] < 0.7 * result["baseline_bits_per_dim"], result
    # the export: a plain torch nn.Sequential(Linear, Sigmoid), rebuilt as the module docstring shows
    cfg = json.loads((out / "nade_config.json").read_text())
    encoder = torch.nn.Sequential(torch.nn.Linear(cfg["pixels"], cfg["hidden"]), torch.nn.Sigmoid())
    encoder.load_state_dict(load_file(str(out / "model.safetensors")))
    images = torch.rand(3, 3, 16, 16)
    grey = (images * torch.tensor(cfg["luma"]).view(1, 3, 1, 1)).sum(1).flatten(1)
    nade = load_nade(out)
    with torch.no_grad():
        features = encoder((grey < cfg["threshold"]).float())
        assert features.shape == (3, 32) and torch.allclose(features, nade(images), atol=1e-6)
    # the reloaded density gives the run's held-out bits/dim (mmssl eval's path), and samples were drawn
    obj = get_objective("nade")(parse_recipe(raw))
    again = obj.evaluate_export(out)
    assert again["bits_per_dim"] == pytest.approx(result["bits_per_dim"], rel=1e-5)
    assert again["knn_top1"] == pytest.approx(result["knn_top1"])
    grid = Image.open(out / "nade_samples.png")
    assert grid.size == (4 * (8 * 17 + 1), 4 * (2 * 17 + 1)) and grid.getextrema() == (0, 255)  # ink and paper


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    """The Bernoulli pixels are drawn from torch's generator, which the checkpoint restores: a run stopped after a
    checkpoint and resumed ends with exactly the weights of an unbroken run."""
    from clirun import straight_and_resumed_here

    raw = nade_recipe(tmp_path / "unused", binarise="bernoulli", linear_probe=False, samples=0)
    raw["train"].update(max_steps=8, save_every=4, keep_checkpoints=10)
    a, b, stopped_at = straight_and_resumed_here(raw, tmp_path, 4, 8)
    assert a.keys() == b.keys() and any("output_weight" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_bad_recipes_are_refused_with_one_clear_message(tmp_path):
    raw = nade_recipe(tmp_path)
    raw["model"] = {"arch": "resnet18"}
    with pytest.raises(RecipeError, match=r"objective 'nade' builds its own encoder.*remove the model section"):
        get_objective("nade")(parse_recipe(raw)).setup()
    raw = nade_recipe(tmp_path, binarise="dither")
    with pytest.raises(RecipeError, match=r"objective\.binarise: 'dither' is not allowed.*threshold"):
        parse_recipe(raw)
