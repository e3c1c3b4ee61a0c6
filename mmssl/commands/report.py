"""`mmssl report OUTPUT_DIR ...`: a run's (or several runs') curves and diagnostics on one HTML page."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("report", help="draw a run's (or several runs') curves and diagnostics into one "
                                 "HTML page: mmssl report runs/clip_world")
    parser.add_argument("output_dirs", nargs="+", help="output folders of mmssl runs; several are overlaid")
    parser.add_argument("--out", help="report folder (default: DIR/report for one run, ./mmssl-report for several)")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.report.page import write_report

    page = write_report(args.output_dirs, args.out)
    print(json.dumps({"report": str(page), "figures": sorted(p.name for p in page.parent.glob("*.png"))}, indent=2))
