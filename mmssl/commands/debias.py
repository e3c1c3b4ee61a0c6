"""`mmssl debias MODEL_DIR --out DIR [--method hard|inlp] [--word-pairs gender|religion|FILE] [--seed S]`: remove a
bias subspace from a sentence encoder's embeddings, written as a module of a new SentenceTransformer folder."""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "debias", help="project a bias subspace out of a SentenceTransformer folder's embeddings (hard-debias or "
                       "INLP), into a new folder that SentenceTransformer loads natively")
    parser.add_argument("model_dir", help="a SentenceTransformer folder (e.g. a simcse run's output_dir)")
    parser.add_argument("--out", required=True, help="the new folder (not the input, nor inside it)")
    parser.add_argument("--method", choices=("hard", "inlp"), default="hard",
                        help="hard: top-k principal directions of the pair differences (Bolukbasi et al. 2016); "
                             "inlp: iterative nullspace projection (Ravfogel et al. 2020)")
    parser.add_argument("--word-pairs", default="gender",
                        help="gender, religion, or a file of 'word,counterpart' lines (default: gender)")
    parser.add_argument("--seed", type=int, default=0, help="INLP's held-out words and the permutation tests")
    parser.add_argument("--k", type=int, default=1, help="hard: how many directions to remove (default 1)")
    parser.add_argument("--max-iterations", type=int, default=20, help="inlp: at most this many directions")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier mmssl debias output at --out")
    return parser


def run(args: argparse.Namespace) -> None:
    from mmssl.debias import debias

    report = debias(args.model_dir, args.out, method=args.method, word_pairs=args.word_pairs, seed=args.seed,
                    k=args.k, max_iterations=args.max_iterations, overwrite=args.overwrite)
    summary = {key: report[key] for key in ("method", "word_pairs", "removed_dimensions", "seconds")}
    summary["output"] = args.out
    summary["bias"] = {name: {when: {"effect_size": round(r[when]["effect_size"], 3), "p_value": r[when]["p_value"]}
                              for when in ("before", "after")} for name, r in report["bias"].items()}
    print(json.dumps(summary, indent=2))
