"""Shared helpers of the image SSL tests (importable as `image_ssl_recipes`: tests/ is on pytest's pythonpath):
a tiny ResNet, a raw recipe for one image method on a small built-in world, the train losses of a finished run,
and an objective set up from such a recipe without training."""

from __future__ import annotations

import json

from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective

TINY_RESNET = {"channels": [8, 8, 16, 16], "small_stem": True}


def image_recipe(output_dir, method: str, **objective) -> dict:
    return {
        "name": f"test-{method}", "output_dir": str(output_dir), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 160, "image_size": 16, "pair_fraction": 0.0}},
        "model": {"arch": "resnet18", "config": dict(TINY_RESNET)},
        "objective": {"name": method, "image_size": 16, "projection_dim": 16, "hidden_dim": 32,
                      "eval_max_images": 200, **objective},
        "train": {"batch_size": 16, "learning_rate": 3e-3, "max_steps": 6, "log_every": 2, "progress": False,
                  "cpu": True},
    }


def losses(output_dir) -> list[float]:
    return [e["loss"] for e in map(json.loads, (output_dir / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]


def image_objective(tmp_path, method: str, **objective):
    """The method's objective on `image_recipe`, set up (data, module) but not trained."""
    recipe = parse_recipe(image_recipe(tmp_path / "o", method, **objective))
    obj = get_objective(method)(recipe)
    obj.setup()
    return obj
