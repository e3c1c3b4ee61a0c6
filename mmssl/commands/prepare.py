"""`mmssl prepare SOURCE OUT --kind ...`: write data as shards for streaming (WebDataset tars or JSON Lines)."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("prepare", help="write data as shards for streaming (WebDataset tars for images, "
                                 "JSON Lines for text, with sizes.json): mmssl prepare photos/ shards/ --kind images")
    parser.add_argument("source", help="a folder, file, glob or brace pattern of the input data, or 'world' for "
                        "the built-in data")
    parser.add_argument("out", help="a new folder for the shards")
    parser.add_argument("--kind", choices=["image_text", "images", "text"], default="image_text",
                        help="what the samples hold (default image_text: images with captions)")
    parser.add_argument("--format", default="auto", help="input format (default: told by the file extensions)")
    parser.add_argument("--column", action="append", default=[], metavar="ROLE=NAME",
                        help="map an input column to a role (image, captions, label, text), e.g. captions=alt")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per output shard (default 1000)")
    parser.add_argument("--image-size", type=int, help="resize images so their shorter side is this (default: keep)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--world-scenes", type=int, default=2000, help="scenes of the built-in world (source 'world')")
    parser.add_argument("--world-seed", type=int, default=0, help="seed of the built-in world (another seed: other scenes)")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.config import DataConfig, WorldConfig
    from mmssl.errors import RecipeError
    from mmssl.prepare import prepare

    columns = {}
    for item in args.column:
        role, sep, name = item.partition("=")
        if not sep or not name:
            raise RecipeError(f"--column {item!r}: write ROLE=NAME, e.g. --column captions=alt_text")
        columns[role] = name
    if args.shard_size < 1 or (args.image_size is not None and args.image_size < 8) or args.workers < 1:
        raise RecipeError("--shard-size and --workers must be at least 1, --image-size at least 8")
    if args.source == "world":
        data = DataConfig(source="world", world=WorldConfig(num_scenes=args.world_scenes, image_size=64, seed=args.world_seed,
                                                            pair_fraction=0.0 if args.kind == "images" else 0.5))
    else:
        data = DataConfig(source="files", path=args.source, format=args.format, columns=columns)
    summary = prepare(data, args.out, args.kind, args.shard_size, args.image_size, args.workers)
    print(json.dumps(summary, indent=2))
