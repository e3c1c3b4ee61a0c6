"""`mmssl finetune RUN --out DIR`: linear-probe and fine-tune an image encoder with 1 %, 10 % and 100 % of the labels,
against the same architecture from random init (a label-efficiency curve; `mmssl report DIR` draws it)."""

from __future__ import annotations

import argparse
import json
import sys


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part.strip().rstrip("%")) / (100 if part.strip().endswith("%") else 1)
                       for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions such as 0.01,0.1,1 (or 1%,10%,100%)") from None
    return values


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "finetune", help="linear-probe and fine-tune an image encoder on 1 %%, 10 %% and 100 %% of the labels, "
        "against random init: mmssl finetune runs/simclr_world --out runs/simclr_world_finetune",
        description="For each label fraction (the same rows for one seed as every mmssl method that uses part of "
        "the labels): a linear probe of the frozen encoder and/or a full fine-tune (backbone + linear head, "
        "cross-entropy, AdamW), and the same for the architecture from random init. Writes finetune.json and the "
        "adapted models into --out; `mmssl report DIR` draws the label-efficiency curve.")
    parser.add_argument("source", help="output_dir of an image SSL run (its labelled data is used), or an exported "
                        "encoder folder (then give --data)")
    parser.add_argument("--out", required=True, help="new folder for finetune.json and the models (an earlier "
                        "output of mmssl finetune is replaced only with --overwrite)")
    parser.add_argument("--labels", type=_fractions, default=(0.01, 0.1, 1.0), metavar="FRACTIONS",
                        help="label fractions, comma-separated (default 0.01,0.1,1; 1%%,10%%,100%% also works)")
    parser.add_argument("--mode", choices=("probe", "full", "both"), default="both",
                        help="probe: linear probe of the frozen encoder; full: fine-tune everything (default both)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of each full fine-tune (default 300)")
    parser.add_argument("--batch-size", type=int, default=128, help="full fine-tune batch size (default 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the full fine-tune (1e-3)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    parser.add_argument("--seed", type=int, help="picks the labelled rows and the random init (default: the run's seed)")
    parser.add_argument("--init", choices=("pretrained", "random", "both"), default="both",
                        help="adapt the pretrained encoder, the same architecture from random init (the anchor), or "
                        "both (default)")
    parser.add_argument("--data", help="labelled images instead of the run's data: a folder of class subfolders or a "
                        "csv/jsonl/parquet table with an image and a label column")
    parser.add_argument("--eval-data", help="held-out labelled images for --data (default: 5 %% of --data held out)")
    parser.add_argument("--label-column", help="the label column of a --data table (default: label/class/class_name)")
    parser.add_argument("--classes", help="comma-separated class names, in the order of integer labels (default: "
                        "the data's)")
    parser.add_argument("--image-size", type=int, help="image side for an export that does not record it")
    parser.add_argument("--no-save-models", action="store_true", help="write finetune.json only")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier mmssl finetune output in --out")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.errors import RecipeError
    from mmssl.finetune import FinetuneSettings, finetune, user_data

    if args.eval_data and not args.data:
        raise RecipeError("--eval-data goes with --data (the run's own data brings its eval split)")
    if args.label_column and not args.data:
        raise RecipeError("--label-column goes with --data (a table of your own)")
    settings = FinetuneSettings(
        fractions=tuple(args.labels), modes=("probe", "full") if args.mode == "both" else (args.mode,),
        inits={"both": ("pretrained", "random_init"), "pretrained": ("pretrained",),
               "random": ("random_init",)}[args.init], steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, save_models=not args.no_save_models,
        device="cpu" if args.cpu else "auto")
    data = user_data(args.data, args.eval_data, args.label_column) if args.data else None
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    results = finetune(args.source, args.out, settings, data, classes, args.image_size, args.overwrite,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    table = {f"{r['init']}/{r['mode']}/{r['fraction']:g}": round(r["top1"], 4) for r in results["results"]}
    print(json.dumps({"out": args.out, "top1": table, "reference": results["reference"],
                      "seconds": results["seconds"]}, indent=2))
