"""`mmssl curate CONFIG [key=value ...]`: filter and deduplicate data into curated shards plus a report."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("curate", help="filter and deduplicate image-text, image or text data into "
                                 "curated shards plus curate_report.json: mmssl curate configs/curate_world.yaml")
    parser.add_argument("config", help="a curate config (YAML), e.g. configs/curate_world.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. output_dir=build/curated "
                        "filters.language=null")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.curate import REPORT, curate, load_curate_config

    summary = curate(load_curate_config(args.config, args.overrides))
    print(json.dumps(summary, indent=2))
    if summary.get("unchanged"):
        print(f"already done: {summary['output']} holds this curated data (same input and config)")
    else:
        print(f"kept {summary['kept']} of {summary['read']}; examples of dropped samples in "
              f"{summary['output']}/{REPORT}")
