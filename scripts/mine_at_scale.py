"""The whole `mmssl mine` pipeline at scale: a synthetic corpus of N documents (parquet) and Q (query,
positive) pairs, mined with BM25 by the real CLI in a child process; prints the stage timings from the
stats file and the child's peak RSS.

Corpus: words from a Zipf distribution over 20,000 words, 50 per document (as scripts/bench_mining.py);
queries are 8-word spans of a document, whose positive is that document.

    flock /tmp/mmssl-bench.lock python scripts/mine_at_scale.py --docs 1000000 --queries 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mining import synthetic_corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--workdir", help="keep the data and output here (default: a temporary folder)")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus_path, pairs_path = work / "corpus.parquet", work / "pairs.parquet"
        if not corpus_path.exists():
            t = time.perf_counter()
            corpus, _ = synthetic_corpus(args.docs, 0)
            pq.write_table(pa.table({"text": corpus}), corpus_path)
            del corpus
            print(f"wrote {args.docs:,} documents in {time.perf_counter() - t:.0f} s", flush=True)
        import numpy as np

        table = pq.read_table(corpus_path)
        rng = np.random.default_rng(1)
        picks = rng.integers(0, table.num_rows, size=args.queries)
        docs = table.column("text").take(pa.array(picks)).to_pylist()
        del table
        anchors = [" ".join(d.split()[s:s + 8]) for d, s in zip(docs, rng.integers(0, 42, size=args.queries))]
        pq.write_table(pa.table({"anchor": anchors, "positive": docs}), pairs_path)
        recipe = work / "mine.yaml"
        recipe.write_text(json.dumps({
            "output": str(work / "mined.parquet"), "method": "bm25", "num_negatives": args.negatives, "window": 30,
            "data": {"source": "files", "path": str(pairs_path)},
            "corpus": {"source": "files", "path": str(corpus_path)},
        }))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mmssl", "mine", str(recipe)], env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        stats = json.loads((work / "mined.parquet.stats.json").read_text())
        print(json.dumps({k: stats[k] for k in ("queries", "rows_written", "corpus_size", "counts", "seconds")}, indent=1))
        print(f"mmssl mine: {args.docs:,} documents, {args.queries:,} queries: {wall:.0f} s wall (process start "
              f"and data loading included), peak RSS {peak:,.0f} MB")


if __name__ == "__main__":
    main()
