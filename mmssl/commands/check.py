"""`mmssl check RECIPE key=value ...`: validate a recipe and print it with every default filled in."""

from __future__ import annotations

import argparse


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("check", help="validate a recipe and print it with every default filled in")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    return parser


def run(args: argparse.Namespace) -> None:
    import yaml

    from mmssl.recipes import load_recipe, recipe_to_dict

    print(yaml.safe_dump(recipe_to_dict(load_recipe(args.recipe, args.overrides)), sort_keys=False), end="")
