"""The precursor methods train on streamed shards too (CPC and word2vec test their own streams, resumed): a few
steps of each on WebDataset shards prepared from the world, with a finite, logged loss."""

from __future__ import annotations

import json
import math

import pytest
from image_ssl_recipes import image_recipe

from mmssl.config import DataConfig, WorldConfig
from mmssl.prepare import prepare
from mmssl.recipes import parse_recipe
from mmssl.train.loop import train

SETTINGS = {"rbm": {"layers": [32], "image_size": 16}, "nade": {"hidden": 16, "image_size": 8},
            "vqvae": {"image_size": 16}, "denoising_autoencoder": {"output_size": 8}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    data = DataConfig(source="world", world=WorldConfig(num_scenes=160, image_size=32, pair_fraction=0.0))
    assert prepare(data, str(folder), "images", shard_size=80)["shards"] == 2
    return str(folder / "shard-{00000..00001}-0000.tar")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_trains_on_streamed_shards(method, shards, tmp_path):
    raw = image_recipe(tmp_path / "run", method, eval_before=False, linear_probe=False, **SETTINGS[method])
    if method in ("rbm", "nade"):
        raw.pop("model", None)  # they build their own encoder
    raw["data"] = {"source": "files", "path": shards, "streaming": True}
    raw["train"].update(max_steps=4, log_every=1, num_workers=0)
    metrics = train(parse_recipe(raw))
    logged = [e["loss"] for e in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    assert metrics["train_images"] == "streamed" and metrics["steps"] == 4
    assert len(logged) == 4 and all(math.isfinite(x) for x in logged)
