"""`mmssl push PATH --repo-id NAMESPACE/NAME`: publish an output folder (or a mined dataset file) to the Hub."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("push", help="publish an output folder to the Hugging Face Hub with a model card")
    parser.add_argument("path", help="an mmssl output folder, or a dataset file written by `mmssl mine`")
    parser.add_argument("--repo-id", required=True, help="namespace/name")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", help="branch to publish to (created if missing)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--overwrite", action="store_true", help="publish over a repo that already has files")
    parser.add_argument("--license", help="license for the card metadata, e.g. apache-2.0")
    parser.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    return parser


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mmssl.hub import push_dataset, push_model

    common = {"endpoint": args.endpoint, "private": args.private, "overwrite": args.overwrite, "license": args.license}
    if Path(args.path).is_file():  # a mined (or augmented) dataset file
        result = push_dataset(args.path, args.repo_id, **common)
    else:
        result = push_model(args.path, args.repo_id, revision=args.revision, commit_message=args.message, **common)
    print(json.dumps({"repo_id": result.repo_id, "commit_url": result.commit_url, "files": result.files}, indent=2))
