"""VQ-VAE: codebook collapse is detected and recorded, a bad image size is refused by name, and a tiny run through
the real trainer whose reconstruction error goes down exports a VQ-VAE that reloads (timm backbone + codebook +
decoder) and reproduces the run's measured reconstruction error; a stopped run resumes to the same weights,
codebook buffers included; the prior stage (scripts/vqvae_prior.py) gives each code one token and scores bits per
code against naive references."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from image_ssl_recipes import image_objective, image_recipe

from mmssl.errors import RecipeError
from mmssl.objectives.vqvae import codebook_usage
from mmssl.recipes import parse_recipe

SMALL = {"codebook_size": 16, "code_dim": 8, "decoder_channels": 16}


def test_a_collapsed_codebook_is_detected_and_logged(caplog):
    one_code = torch.zeros(16)
    one_code[3] = 500
    with caplog.at_level(logging.WARNING, logger="mmssl.objectives.vqvae"):
        stats = codebook_usage(one_code, 0.2)
    assert stats == {"codebook_perplexity": pytest.approx(1.0), "codes_used": 1.0, "codebook_size": 16.0,
                     "codebook_collapsed": 1.0}
    assert [r.getMessage() for r in caplog.records if "codebook has collapsed" in r.getMessage()]
    two = torch.zeros(16)
    two[:2] = 250  # perplexity 2: below 0.2 x 16 = 3.2, above 0.05 x 16 = 0.8
    assert codebook_usage(two, 0.2)["codebook_collapsed"] == 1.0
    assert codebook_usage(two, 0.05)["codebook_collapsed"] == 0.0
    caplog.clear()
    even = codebook_usage(torch.full((16,), 30.0), 0.2)
    assert even["codebook_perplexity"] == pytest.approx(16.0) and even["codebook_collapsed"] == 0.0
    assert not [r for r in caplog.records if "collapsed" in r.getMessage()]  # only a collapse is logged


def test_an_image_size_the_decoder_cannot_reach_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"objective\.image_size=20.*power of 2"):
        image_objective(tmp_path, "vqvae", image_size=20, eval_before=False, **SMALL)


@pytest.mark.slow
def test_trains_evaluates_and_exports_a_vqvae_that_reloads(tmp_path):
    from mmssl.data.image_sources import load_images
    from mmssl.data.image_views import eval_view
    from mmssl.models.vision import load_backbone
    from mmssl.objectives.vqvae import load_vqvae
    from mmssl.train.loop import train

    out = tmp_path / "run"
    raw = image_recipe(out, "vqvae", restart_after=5, eval_max_images=100, **SMALL)
    raw["train"].update(max_steps=30, log_every=3, learning_rate=1e-2)
    recipe = parse_recipe(raw)
    metrics = train(recipe)
    logged = [e["reconstruction_mse"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    # fixed seed: the reconstruction error falls (the decoder starts at the images' mean colour) by over a tenth
    assert sum(logged[-3:]) < 0.9 * sum(logged[:3]), logged
    result = metrics["eval"]
    assert 0 <= result["knn_top1"] <= 1 and "random_init_knn_top1" in result
    assert result["codebook_collapsed"] == 0 and 2 < result["codebook_perplexity"] <= result["codes_used"] <= 16
    config = json.loads((out / "vqvae_config.json").read_text())
    assert config["codebook_collapsed"] == 0 and config["grid"] == [2, 2]  # 16 px, a /8 small-stem ResNet
    assert load_backbone(str(out))(torch.zeros(2, 3, 16, 16)).shape == (2, 16)  # the probed encoder: timm
    vq = load_vqvae(out)
    images = load_images(recipe.data, 16, recipe.seed).eval.images[:100]
    x = eval_view(images, 16, vq.mean, vq.std)
    with torch.no_grad():
        recon = vq(x)["reconstruction"]
    mean, std = torch.tensor(vq.mean).view(1, 3, 1, 1), torch.tensor(vq.std).view(1, 3, 1, 1)
    pixels = x * std + mean
    mean_colour = float((pixels - pixels.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean())
    assert result["reconstruction_mse"] < 0.9 * mean_colour, (result["reconstruction_mse"], mean_colour)
    from mmssl.hub.cards import render_card

    card = render_card(out, "someone/vqvae")  # the card names the codebook's usage
    assert f"perplexity {result['codebook_perplexity']:.1f} of" in card and "collapsed**" not in card
    # the export is the evaluated model: the same reconstruction error on the same images
    assert float((recon - pixels).pow(2).mean()) == pytest.approx(result["reconstruction_mse"], rel=1e-3)
    codes = vq.codes_of(x)
    assert codes.shape == (len(x), 2, 2) and vq.decode(codes).shape == (len(x), 3, 16, 16)


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights_and_codebook(tmp_path):
    """The codebook, its EMA statistics and dead-code counters are buffers and the restarts draw from torch's
    generator, which the checkpoint restores: a resumed run ends exactly where an unbroken one does."""
    from clirun import straight_and_resumed_here

    raw = image_recipe(tmp_path / "unused", "vqvae", eval_before=False, linear_probe=False, restart_after=3, **SMALL)
    raw["train"].update(max_steps=12, save_every=4, keep_checkpoints=10)
    a, b, _ = straight_and_resumed_here(raw, tmp_path, 4, 12)
    assert a.keys() == b.keys() and {"quantizer.codebook", "quantizer.unused_steps", "quantizer.ema_sum"} <= {
        k.split("module.", 1)[-1] for k in a}
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def _prior_script():
    import importlib.util

    from helpers import ROOT

    spec = importlib.util.spec_from_file_location("vqvae_prior", ROOT / "scripts" / "vqvae_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prior_sees_one_token_per_code_and_is_scored_in_bits_per_code(tmp_path):
    from types import SimpleNamespace

    prior = _prior_script()
    tokenizer = prior.code_tokenizer(5, tmp_path / "tok")
    codes = torch.tensor([[4, 0, 2, 2]])
    assert tokenizer(prior.code_line(codes[0]))["input_ids"] == [1, *(codes[0] + 2).tolist()]  # <|image|>, code + 2
    assert tokenizer.eos_token_id == 0 and len(tokenizer) == 7
    # unigram: add-one smoothed training frequencies; naive: counts 2+1, 1+1, 0+1, 0+1, 1+1 of 9
    train = torch.tensor([[0, 0, 1, 4]])
    expected = -sum(math.log2(p) for p in (2 / 9, 3 / 9, 1 / 9, 1 / 9)) / 4
    assert prior.unigram_bits(train, codes, 5) == pytest.approx(expected)

    class Uniform:  # a "model" with equal logits over the 7 tokens, or all mass on code 2 (token 4)
        def __init__(self, peaked: bool):
            self.peaked = peaked

        def __call__(self, input_ids):
            logits = torch.zeros(*input_ids.shape, 7)
            if self.peaked:
                logits[..., 4] = 50.0
            return SimpleNamespace(logits=logits)

    assert prior.prior_bits(Uniform(False), codes + 2, 1) == pytest.approx(math.log2(7))
    assert prior.prior_bits(Uniform(True), torch.full((2, 4), 4), 1) == pytest.approx(0.0, abs=1e-6)
    drawn = prior.sample(Uniform(False), 200, 4, 1, torch.Generator().manual_seed(0))
    assert drawn.shape == (200, 4) and set(drawn.unique().tolist()) == {2, 3, 4, 5, 6}  # codes only
