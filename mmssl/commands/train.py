"""`mmssl train RECIPE key=value ...`: run a recipe."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("train", help="run a recipe: mmssl train configs/mlm_world.yaml train.max_steps=100")
    parser.add_argument("recipe", help="path of a YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size=16")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.recipes import load_recipe
    from mmssl.train.loop import train

    recipe = load_recipe(args.recipe, args.overrides)
    metrics = train(recipe)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"output_dir": recipe.output_dir, **metrics}, indent=2))
