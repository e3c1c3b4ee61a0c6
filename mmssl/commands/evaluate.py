"""`mmssl eval OUTPUT_DIR key=value ... [--bias]`: evaluate a trained output folder."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("eval", help="evaluate a trained output folder: mmssl eval runs/mlm_world")
    parser.add_argument("output_dir", help="the output_dir of an mmssl run")
    parser.add_argument("overrides", nargs="*", help="overrides of the saved recipe, e.g. data.eval_path=held_out.txt")
    parser.add_argument("--bias", action="store_true", help="also run the association tests (WEAT, SEAT, and for "
                        "image-text models skin tone x pleasantness); recorded in metrics.json and the model card")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.evaluate import evaluate_output

    print(json.dumps(evaluate_output(args.output_dir, args.overrides, args.bias), indent=2))
