"""Benchmark: mmssl's word2vec against gensim's `Word2Vec` on the same corpus and settings.

Both see the same sentences (split by mmssl's word rule and written one per line), the same vocabulary rule
(``min_count``), window, negatives, subsampling, dimension, epochs and a linear learning-rate decay from 0.025
(gensim's ``alpha``; mmssl: plain SGD on the summed loss). Runs alternate between the two, each in its own
subprocess. Reported per run: training words/s (corpus words x epochs / training seconds; mmssl's training
seconds exclude its start-up and vocabulary pass, gensim's include its vocabulary pass), wall time, and quality
measured for both by gensim's own `evaluate_word_pairs` (wordsim353, SimLex-999) and `evaluate_word_analogies`
(questions-words), the files that ship inside the gensim package.

The default corpus is English prose that a Debian machine can install: the GCIDE dictionary (``apt-get install
dict-gcide``) and WordNet's glosses (``wordnet-base``), about 5.2 million words; ``--corpus FILE`` takes any text
file (one sentence or paragraph per line).

    python scripts/bench_word2vec.py                          # skip-gram, 1 epoch, 2 repeats each
    python scripts/bench_word2vec.py --epochs 5 --repeats 1 --architecture cbow
    python scripts/bench_word2vec.py --device cuda --negative-sharing batch --batch-size 4096
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def build_corpus(path: Path) -> None:
    """GCIDE definitions and WordNet glosses, one per line, split by mmssl's word rule."""
    from mmssl.data.words import words

    texts: list[str] = []
    gcide = Path("/usr/share/dictd/gcide.dict.dz")
    if gcide.is_file():
        raw = gzip.open(gcide, "rb").read().decode("utf-8", "replace")
        for para in re.split(r"\n\s*\n", raw):
            para = re.sub(r"\[[^\]]*\]", " ", para)  # [1913 Webster], etymologies
            para = re.sub(r"^\S+ \\[^\\]*\\.*$", " ", para, flags=re.M)  # the headword line
            texts.append(para)
    for pos in ("noun", "verb", "adj", "adv"):
        data = Path(f"/usr/share/wordnet/data.{pos}")
        if data.is_file():
            for line in data.read_text(encoding="latin-1").splitlines():
                if not line.startswith("  ") and " | " in line:
                    texts.extend(line.split(" | ", 1)[1].split(";"))
    if not texts:
        sys.exit("no corpus: apt-get install dict-gcide wordnet-base, or pass --corpus FILE")
    with open(path, "w", encoding="utf-8") as out:
        for text in texts:
            tokens = words(text)
            if len(tokens) >= 3:
                out.write(" ".join(tokens) + "\n")


def gensim_quality(vectors) -> dict[str, float]:  # noqa: ANN001 - gensim KeyedVectors
    from gensim.test.utils import datapath

    return {"wordsim353": vectors.evaluate_word_pairs(datapath("wordsim353.tsv"))[1][0],
            "simlex999": vectors.evaluate_word_pairs(datapath("simlex999.txt"))[1][0],
            "analogy": vectors.evaluate_word_analogies(datapath("questions-words.txt"))[0]}


def run_gensim(args: argparse.Namespace) -> dict:
    from gensim.models import Word2Vec
    from gensim.models.word2vec import LineSentence

    sentences = LineSentence(args.corpus_file)
    start = time.perf_counter()
    model = Word2Vec(sentences, sg=int(args.architecture == "skipgram"), vector_size=args.dim, window=args.window,
                     negative=args.negatives, sample=args.sample, min_count=args.min_count, epochs=args.epochs,
                     workers=args.workers, seed=args.seed, alpha=0.025, min_alpha=0.0001)
    seconds = time.perf_counter() - start
    return {"train_seconds": seconds, "words": model.corpus_total_words, "vocab": len(model.wv),
            **gensim_quality(model.wv)}


def run_mmssl(args: argparse.Namespace) -> dict:
    import torch
    from gensim.models import KeyedVectors

    from mmssl.recipes import parse_recipe
    from mmssl.train.loop import train

    torch.set_num_threads(args.workers) if args.device == "cpu" else None
    out = Path(args.workdir) / "mmssl_run"
    recipe = parse_recipe({
        "output_dir": str(out), "seed": args.seed,
        "data": {"source": "files", "path": args.corpus_file, "format": "txt", "streaming": False},
        "objective": {"name": "word2vec", "architecture": args.architecture, "dim": args.dim, "window": args.window,
                      "negatives": args.negatives, "sample": args.sample, "min_count": args.min_count,
                      "negative_sharing": args.negative_sharing},
        "train": {"batch_size": args.batch_size, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                  "learning_rate": 0.025, "scheduler": "linear", "max_grad_norm": None, "epochs": args.epochs,
                  "log_every": 200, "progress": False, "overwrite": True, "cpu": args.device == "cpu",
                  "mixed_precision": "no"}})
    metrics = train(recipe)
    vectors = KeyedVectors.load_word2vec_format(str(out / "word2vec.txt"))
    return {"train_seconds": metrics["train_seconds"], "words": metrics["corpus_words"], "vocab": len(vectors),
            **gensim_quality(vectors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="a text file (default: GCIDE + WordNet glosses, built once)")
    parser.add_argument("--architecture", choices=["skipgram", "cbow"], default="skipgram")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--sample", type=float, default=1e-3)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--negative-sharing", choices=["token", "batch"], default="token")
    parser.add_argument("--batch-size", type=int, default=160, help="mmssl: sentences per step")
    parser.add_argument("--workers", type=int, default=2, help="gensim worker threads / torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", choices=["gensim", "mmssl"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus-file", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_gensim(args) if args.run == "gensim" else run_mmssl(args)))
        return
    with tempfile.TemporaryDirectory() as workdir:
        corpus = Path(workdir) / "corpus.txt"
        if args.corpus:
            from mmssl.data.words import words

            with open(args.corpus, encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as out:
                for line in src:
                    if tokens := words(line):
                        out.write(" ".join(tokens) + "\n")
        else:
            build_corpus(corpus)
        results: dict[str, list[dict]] = {"gensim": [], "mmssl": []}
        for repeat in range(args.repeats):
            for name in ("gensim", "mmssl"):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--run", name,
                                       "--corpus-file", str(corpus), "--workdir", workdir],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["wall_seconds"] = time.perf_counter() - start
                result["words_per_s"] = result["words"] * args.epochs / result["train_seconds"]
                results[name].append(result)
                print(f"repeat {repeat + 1} {name:6s}: {result['words_per_s']:>9,.0f} words/s  train "
                      f"{result['train_seconds']:.1f} s  wall {result['wall_seconds']:.1f} s  vocab {result['vocab']}  "
                      f"wordsim353 {result['wordsim353']:.3f}  simlex999 {result['simlex999']:.3f}  "
                      f"analogy {result['analogy']:.3f}", flush=True)
    speed = {k: statistics.median(r["words_per_s"] for r in v) for k, v in results.items()}
    print(f"\n{args.architecture}, {args.epochs} epoch(s), dim {args.dim}, window {args.window}, negatives "
          f"{args.negatives}, {args.device}: mmssl / gensim words/s = {speed['mmssl'] / speed['gensim']:.2f}x")
    for metric in ("wordsim353", "simlex999", "analogy"):
        a = statistics.mean(r[metric] for r in results["mmssl"])
        b = statistics.mean(r[metric] for r in results["gensim"])
        print(f"  {metric:10s} mmssl {a:.3f}  gensim {b:.3f}  difference {100 * (a - b):+.1f} points")


if __name__ == "__main__":
    main()
