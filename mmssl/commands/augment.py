"""`mmssl augment CONFIG key=value ...`: make positive views (back-translation, lexical edits) into a dataset."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("augment", help="make positive views (back-translation, lexical edits) into a dataset")
    parser.add_argument("config", help="augmentation recipe (YAML), e.g. configs/augment_world.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. output.path=pairs.jsonl seed=1")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.augment import augment, load_config

    stats = augment(load_config(args.config, args.overrides))
    summary = {k: stats[k] for k in ("output", "format", "sentences", "skipped_empty", "truncated", "pairs",
                                     "dropped", "translation_model_calls", "cache", "seconds")}
    summary["views"] = {name: {"kept": v["kept"], "dropped": {r: n for r, n in v["dropped"].items() if n}}
                        for name, v in stats["views"].items()}
    print(json.dumps(summary, indent=2))
