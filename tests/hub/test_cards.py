"""`mmssl.hub.cards`: model cards rendered from the templates for a finished run."""

from __future__ import annotations

import pytest

from helpers import lm_recipe

from mmssl.hub import render_card
from mmssl.recipes import parse_recipe
from mmssl.train.loop import train


@pytest.mark.slow
def test_card_renders_for_a_causal_lm(tmp_path):
    out = tmp_path / "clm"
    train(parse_recipe(lm_recipe(out, "clm", max_steps=2)))
    card = render_card(out, "org/clm")
    assert "pipeline_tag: text-generation" in card and 'pipeline("text-generation", model="org/clm")' in card
    assert "Limitations and bias" in card and "synthetic world" in card
