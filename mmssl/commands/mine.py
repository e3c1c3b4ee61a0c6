"""`mmssl mine CONFIG key=value ...`: mine hard negatives (BM25, dense or hybrid) for (query, positive) pairs."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("mine", help="mine hard negatives (BM25, dense or hybrid) for (query, positive) pairs")
    parser.add_argument("config", help="mining recipe (YAML), e.g. configs/mine_world_bm25.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. num_negatives=3")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.mining.config import load_mining_config
    from mmssl.mining.run import mine, write

    cfg = load_mining_config(args.config, args.overrides)
    result = mine(cfg)
    path = write(result, cfg)
    print(json.dumps({"output": str(path), **result.stats}, indent=2))
