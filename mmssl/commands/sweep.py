"""`mmssl sweep RECIPE KEY=V1,V2 ...`: run a recipe over a grid of overrides and tabulate the results."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("sweep", help="run a recipe over a grid of overrides, one process per run, and "
                                 "tabulate the results: mmssl sweep configs/clip_world.yaml objective.views.color_jitter=0,0.2,0.4")
    parser.add_argument("recipe")
    parser.add_argument("grid", nargs="+", help="KEY=V1,V2,... to sweep (KEY=VALUE: the same for every run)")
    parser.add_argument("--out", help="folder of the runs, the table and the report (default: runs/sweep_<recipe>)")
    parser.add_argument("--launcher", help="command each run starts behind, e.g. 'torchrun --standalone --nproc_per_node 2'")
    parser.add_argument("--dry-run", action="store_true", help="print every run's command instead of running it")
    parser.add_argument("--keep-going", action="store_true", help="run the remaining runs after one fails")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.sweep import sweep

    result = sweep(args.recipe, args.grid, args.out, args.launcher, args.dry_run, args.keep_going)
    print("\n".join(result["commands"]) if args.dry_run else json.dumps(result, indent=2))
