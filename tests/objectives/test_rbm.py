"""Stacked RBMs (greedy layer-wise, CD-k / persistent CD): the free energy, Gibbs sampling and the CD update against
naive loops over units, persistent chains carried from step to step, lower layers frozen while the next one trains,
a tiny run through the real trainer whose reconstruction error goes down and whose export loads as a plain torch
nn.Sequential, a stopped run resuming to identical weights, and bad recipes refused with one message."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from image_ssl_recipes import image_recipe

from mmssl.errors import RecipeError
from mmssl.losses.rbm import cd_loss, free_energy, gibbs_chain, reconstruction_error
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def rbm_tensors(visible=4, hidden=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(hidden, visible, generator=g), torch.randn(visible, generator=g) * 0.5,
            torch.randn(hidden, generator=g) * 0.5)


def test_free_energy_is_minus_the_log_of_the_summed_out_hidden_units():
    weight, b, c = rbm_tensors()
    v = (torch.rand(5, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    got = free_energy(v, weight, b, c)
    for n in range(5):
        # F(v) = -log sum_h exp(-E(v, h)), E(v, h) = -v.b - h.c - sum_ij v_i W_ji h_j: every h of 3 units
        total = 0.0
        for h in itertools.product((0, 1), repeat=3):
            energy = -sum(float(v[n, i] * b[i]) for i in range(4)) - sum(h[j] * float(c[j]) for j in range(3)) \
                - sum(float(v[n, i]) * float(weight[j, i]) * h[j] for i in range(4) for j in range(3))
            total += math.exp(-energy)
        assert float(got[n]) == pytest.approx(-math.log(total), rel=1e-5)


def test_the_cd_surrogate_gradient_is_the_cd_update():
    weight, b, c = rbm_tensors()
    g = torch.Generator().manual_seed(2)
    data, model = (torch.rand(6, 4, generator=g) < 0.5).float(), torch.rand(6, 4, generator=g)
    params = [t.clone().requires_grad_() for t in (weight, b, c)]
    cd_loss(data, model, *params).backward()
    n = data.shape[0]

    def hidden(v, j):
        return sigmoid(float(c[j]) + sum(float(weight[j, i] * v[i]) for i in range(4)))

    for j in range(3):  # the CD update, unit by unit: <v_i h_j>_data - <v_i h_j>_model; minus it is the gradient
        for i in range(4):
            update = sum(float(data[k, i]) * hidden(data[k], j) - float(model[k, i]) * hidden(model[k], j)
                         for k in range(n)) / n
            assert float(params[0].grad[j, i]) == pytest.approx(-update, abs=1e-6)
        update = sum(hidden(data[k], j) - hidden(model[k], j) for k in range(n)) / n
        assert float(params[2].grad[j]) == pytest.approx(-update, abs=1e-6)
    for i in range(4):
        assert float(params[1].grad[i]) == pytest.approx(-float((data[:, i] - model[:, i]).mean()), abs=1e-6)


def naive_cd_step(data, weight, b, c, k, lr, g):
    """One CD-k update written unit by unit, drawing the same uniforms as `gibbs_chain` (hidden, then visible)."""
    n, (h_units, v_units) = data.shape[0], weight.shape
    weight, b, c = weight.tolist(), b.tolist(), c.tolist()

    def p_h(v, j):
        return sigmoid(c[j] + sum(weight[j][i] * v[i] for i in range(v_units)))

    def p_v(h, i):
        return sigmoid(b[i] + sum(weight[j][i] * h[j] for j in range(h_units)))

    v = data.tolist()
    probabilities = v
    for _ in range(k):
        u = torch.rand(n, h_units, generator=g).tolist()
        h = [[1.0 if u[r][j] < p_h(v[r], j) else 0.0 for j in range(h_units)] for r in range(n)]
        probabilities = [[p_v(h[r], i) for i in range(v_units)] for r in range(n)]
        u = torch.rand(n, v_units, generator=g).tolist()
        v = [[1.0 if u[r][i] < probabilities[r][i] else 0.0 for i in range(v_units)] for r in range(n)]
    x, m = data.tolist(), probabilities  # the negative phase uses the last visible probabilities
    new_w = [[weight[j][i] + lr * sum(x[r][i] * p_h(x[r], j) - m[r][i] * p_h(m[r], j) for r in range(n)) / n
              for i in range(v_units)] for j in range(h_units)]
    new_b = [b[i] + lr * sum(x[r][i] - m[r][i] for r in range(n)) / n for i in range(v_units)]
    new_c = [c[j] + lr * sum(p_h(x[r], j) - p_h(m[r], j) for r in range(n)) / n for j in range(h_units)]
    return torch.tensor(new_w), torch.tensor(new_b), torch.tensor(new_c)


@pytest.mark.parametrize("k", [1, 3])
def test_a_cd_k_step_with_sgd_matches_a_naive_cd_loop(k):
    weight, b, c = rbm_tensors(visible=5, hidden=3)
    data = (torch.rand(4, 5, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    expected = naive_cd_step(data, weight, b, c, k, 0.1, torch.Generator().manual_seed(7))
    params = [t.clone().requires_grad_() for t in (weight, b, c)]
    _, negative = gibbs_chain(data, *params, k, generator=torch.Generator().manual_seed(7))
    cd_loss(data, negative, *params).backward()
    torch.optim.SGD(params, lr=0.1).step()
    for got, want in zip(params, expected):
        assert torch.allclose(got.detach(), want, atol=1e-5)


def rbm_recipe(tmp_path, **objective) -> dict:
    raw = image_recipe(tmp_path / "run", "rbm", **{"eval_before": False, "layers": [24, 12], **objective})
    del raw["model"]
    raw["objective"].pop("projection_dim"), raw["objective"].pop("hidden_dim")
    raw["train"].update(optimizer="sgd", learning_rate=0.05, momentum=0.5, max_grad_norm=None, scheduler="constant")
    return raw


def objective_of(raw: dict):
    obj = get_objective("rbm")(parse_recipe(raw))
    obj.setup()
    return obj


def test_persistent_chains_carry_on_from_step_to_step(tmp_path):
    obj = objective_of(rbm_recipe(tmp_path, persistent=True, cd_steps=2))
    module = obj.module
    images = obj.train.images[:16].float() / 255
    start = module.particles_0.clone()
    assert start.shape == (16, 256) and "particles_0" in module.state_dict() and "particles_1" in module.state_dict()
    rbm = module.backbone.rbms[0]
    for _ in range(2):  # each step's chains start where the last step's ended
        before = module.particles_0.clone()
        torch.manual_seed(5)
        module.backbone.visible(images, sample=True)  # the data's draws come first
        expected, _ = gibbs_chain(before, *rbm.parts(), 2)
        torch.manual_seed(5)
        module(images)
        assert torch.equal(module.particles_0, expected)
    assert not torch.equal(module.particles_0, start)
    assert torch.equal(module.particles_1, objective_of(rbm_recipe(tmp_path, persistent=True)).module.particles_1)


def test_greedy_stacking_trains_one_layer_on_the_frozen_ones_below(tmp_path):
    obj = objective_of(rbm_recipe(tmp_path))
    module = obj.module
    module.total_steps.fill_(10)
    assert [(module.steps_done.fill_(s), module.active_layer())[1] for s in range(10)] == [0] * 5 + [1] * 5
    lower, upper = module.backbone.rbms
    images = obj.train.images[:16].float() / 255
    frozen = [t.detach().clone() for t in lower.parts()]
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        out = module(images)
        out["loss"].backward()
        assert all(t.grad is None for t in lower.parts()) and all(t.grad is not None for t in upper.parts())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert out["layer"] == 1 and out["embedding"].shape == (16, 12)
    assert all(torch.equal(a, b) for a, b in zip(frozen, lower.parts()))  # the optimiser left the lower layer alone
    # the upper layer's data: the lower layer's hidden probabilities of the binarised images
    v = lower(module.backbone.visible(images))
    with torch.no_grad():
        out = module(images)
    assert float(out["reconstruction_error"]) == pytest.approx(float(reconstruction_error(v, *upper.parts())), rel=1e-5)


@pytest.mark.slow
def test_trains_evaluates_and_exports_a_plain_torch_encoder(tmp_path):
    from safetensors.torch import load_file

    from mmssl.hub.cards import render_card
    from mmssl.objectives.rbm import load_rbm_encoder
    from mmssl.train.loop import train

    raw = rbm_recipe(tmp_path, layers=[64, 32], eval_before=True, linear_probe=False)
    raw["train"].update(max_steps=40, log_every=4, learning_rate=0.5)
    out = tmp_path / "run"
    metrics = train(parse_recipe(raw))
    logged = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]
    assert [e["layer"] for e in logged] == [0.0] * 5 + [1.0] * 5, logged
    error = [e["reconstruction_error"] for e in logged]
    # fixed seed: each RBM's reconstruction error falls within its 20 steps (bottom 0.138 -> 0.087, top 0.098 -> 0.019)
    assert error[4] < 0.75 * error[0] and error[9] < 0.5 * error[5], error
    result = metrics["eval"]
    assert 0 <= result["knn_top1"] <= 1 and math.isfinite(result["random_init_knn_top1"]) and result["collapsed"] == 0
    # the export: a plain torch nn.Sequential of Linear + Sigmoid, rebuilt as the module docstring shows
    cfg = json.loads((out / "rbm_config.json").read_text())
    sizes = [cfg["visible"], *cfg["layers"]]
    encoder = torch.nn.Sequential(*[m for a, b in zip(sizes, sizes[1:])
                                    for m in (torch.nn.Linear(a, b), torch.nn.Sigmoid())])
    encoder.load_state_dict(load_file(str(out / "model.safetensors")))
    images = torch.rand(3, 3, 16, 16)
    grey = (images * torch.tensor(cfg["luma"]).view(1, 3, 1, 1)).sum(1).flatten(1)
    with torch.no_grad():
        features = encoder((grey < cfg["threshold"]).float())
        assert features.shape == (3, 32)
        assert torch.allclose(features, load_rbm_encoder(out)(images), atol=1e-6)
    # the model card names the method and shows that snippet, which runs as written
    card = render_card(out, "me/rbm-world")
    assert "objective `rbm`" in card and "load_backbone" not in card and "mmssl_backbone.json" not in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(snippet.replace('snapshot_download("me/rbm-world")', repr(str(out))), scope)
    assert scope["features"].shape == (1, 32)


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights_and_particles(tmp_path):
    """Persistent chains, the greedy schedule and the Bernoulli pixels' draws are all state a resume must restore:
    a run stopped after a checkpoint and resumed ends exactly where an unbroken run does."""
    from clirun import straight_and_resumed_here

    raw = rbm_recipe(tmp_path / "unused", persistent=True, binarise="bernoulli", linear_probe=False)
    raw["train"].update(max_steps=16, save_every=4, keep_checkpoints=10)
    a, b, stopped_at = straight_and_resumed_here(raw, tmp_path, 4, 16)
    assert a.keys() == b.keys() and {"particles_0", "particles_1", "steps_done"} <= {k.split(".")[-1] for k in a}
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_bad_recipes_are_refused_with_one_clear_message(tmp_path):
    raw = rbm_recipe(tmp_path, layers=[])
    with pytest.raises(RecipeError, match=r"objective\.layers is empty.*\[512, 256\]"):
        parse_recipe(raw)
    raw = rbm_recipe(tmp_path)
    raw["model"] = {"arch": "resnet18"}
    with pytest.raises(RecipeError, match=r"objective 'rbm' builds its own encoder.*remove the model section"):
        get_objective("rbm")(parse_recipe(raw)).setup()
