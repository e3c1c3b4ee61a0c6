"""Back-translation throughput: mmssl's transformers back-translation vs nlpaug's BackTranslationAug.

Both translate the same sentences (unique captions of the built-in world) English -> pivot -> English with
the same two models: tiny *randomly initialised* MarianMT models (d_model 128, 2+2 layers, word-level
vocabulary of the captions) built and saved locally by `mmssl.data.text_views.tiny.build_tiny_marian`,
because no pretrained translation model is reachable here. The code paths are real; the output is noise,
and many outputs run to their length cap: this measures
the cost of the machinery (padding, batching, generation length), not translation quality. Weights are
drawn with std 1.0 (not 0.02) so that outputs depend on the input, differ in length and often end with
end-of-sentence, as a real model's do; with std 0.02 every input gives the same output and the second
direction would collapse to one unique text (dedup would then win unfairly).

Same settings for both: greedy decoding (num_beams 1), at most --max-length tokens out.

* ``nlpaug``        - `nlpaug.augmenter.word.BackTranslationAug(from_model_name=DIR, to_model_name=DIR)`
  at its default batch size 32, one `augment(list)` call (it pads all sentences to the longest, batches
  in input order, runs a 1-worker DataLoader, generates up to max_length);
* ``mmssl``         - `BackTranslation` view at its defaults (batch 64), cache disabled: unique texts,
  sorted by length, padded per batch, `torch.inference_mode`, each output capped at 2 x its
  own input length + 10 tokens (a per-row stopping criterion);
* ``mmssl-b32``     - the same at nlpaug's batch size 32 (the like-for-like row);
* ``mmssl-fullcap`` - batch 32 and no length cap (every row may run to max_length, like nlpaug).

Each run is its own subprocess (peak RSS = that process's ru_maxrss, models and torch included); model
loading is excluded from the timing; contestants alternate within each repeat; medians are printed.

    flock /tmp/mmssl-bench.lock .venv/bin/python scripts/bench_augment.py [--sentences 256 --repeats 2]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sentences(n: int) -> list[str]:
    from mmssl.data.world import world_columns
    from mmssl.recipes import WorldConfig

    texts = list(dict.fromkeys(world_columns(WorldConfig(num_scenes=4000, seed=0), "text")["text"]))
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} unique sentences")
    return texts[:n]


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    texts = sentences(args.sentences)
    fwd, bwd = str(Path(args.models) / "en-xx"), str(Path(args.models) / "xx-en")
    if args.worker == "nlpaug":
        import nlpaug.augmenter.word as naw

        aug = naw.BackTranslationAug(from_model_name=fwd, to_model_name=bwd, device="cpu", batch_size=32,
                                     max_length=args.max_length)
        run = aug.augment
    else:
        from mmssl.data.text_views.backtranslation import BackTranslation, Generation, Seq2SeqTranslator

        ratio = 1000.0 if args.worker == "mmssl-fullcap" else 2.0
        batch = 32 if args.worker in ("mmssl-b32", "mmssl-fullcap") else Generation().batch_size
        gen = Generation(num_beams=1, max_length=args.max_length, batch_size=batch, length_ratio=ratio)
        view = BackTranslation(Seq2SeqTranslator(fwd, device="cpu", generation=gen),
                               Seq2SeqTranslator(bwd, device="cpu", generation=gen))  # no cache
        run = view
    run(texts[:4])  # warm-up
    start = time.perf_counter()
    out = run(texts)
    seconds = time.perf_counter() - start
    assert len(out) == len(texts)
    print(json.dumps({"worker": args.worker, "sentences": len(texts), "seconds": seconds,
                      "sentences_per_s": len(texts) / seconds, "threads": torch.get_num_threads(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--workers", default="nlpaug,mmssl,mmssl-b32")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from mmssl.data.text_views.tiny import build_tiny_marian

    texts = sentences(args.sentences)
    lengths = sorted(len(t.split()) for t in texts)
    print(f"{len(texts)} unique sentences of the built-in world, {lengths[0]}-{lengths[-1]} words "
          f"(median {lengths[len(lengths) // 2]}); max_length {args.max_length}; greedy")
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed in (("en-xx", 1), ("xx-en", 2)):
            build_tiny_marian(Path(tmp) / name, texts, d_model=128, layers=2, ffn_dim=256, heads=4, seed=seed,
                              init_std=1.0)
        print("models: tiny random MarianMT (d_model 128, 2+2 layers, 4 heads, init std 1.0), saved locally in", tmp)
        results: dict[str, list[dict]] = {}
        names = args.workers.split(",")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for name in order:
                load = os.getloadavg()[0]
                done = subprocess.run([sys.executable, __file__, "--worker", name, "--models", tmp,
                                       "--sentences", str(args.sentences), "--max-length", str(args.max_length)],
                                      capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault(name, []).append(row)
                print(f"  repeat {repeat} {name:14s} {row['sentences_per_s']:8.2f} sentences/s  "
                      f"peak RSS {row['peak_rss_mb']:7.0f} MB  (load avg {load:.2f})", flush=True)
    print(f"\n{'method':14s} {'sentences/s':>12s} {'peak RSS MB':>12s} {'vs nlpaug':>10s}   (medians of {args.repeats})")
    base = statistics.median(r["sentences_per_s"] for r in results.get("nlpaug", [{"sentences_per_s": float("nan")}]))
    for name, rows in results.items():
        speed = statistics.median(r["sentences_per_s"] for r in rows)
        rss = statistics.median(r["peak_rss_mb"] for r in rows)
        print(f"{name:14s} {speed:12.2f} {rss:12.0f} {speed / base:9.2f}x")


if __name__ == "__main__":
    main()
