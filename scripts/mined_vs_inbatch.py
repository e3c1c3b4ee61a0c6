"""Does training on mined hard negatives beat in-batch negatives alone? One run, same everything else.

1. Mine BM25 hard negatives (default guards) for the built-in world's paraphrase pairs (`mmssl mine`).
2. Train supervised SimCSE twice from the same small BERT, seed and steps: with the mined negatives,
   and with in-batch negatives only (`objective.hard_negatives=false`).
3. Evaluate both on the world's held-out pairs (recall@1, MRR@10, hard-negative accuracy).

    python scripts/mined_vs_inbatch.py [--steps 150] [--scenes 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mmssl", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--scenes", type=int, default=2000)
    args = parser.parse_args()
    from mmssl.data.world import world_columns
    from mmssl.recipes import WorldConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        held_out = world_columns(WorldConfig(num_scenes=args.scenes), "pairs", "eval")
        (tmp / "eval.jsonl").write_text("\n".join(
            json.dumps({"anchor": a, "positive": p, "negative": n})
            for a, p, n in zip(held_out["anchor"], held_out["positive"], held_out["negative"])))
        mined = tmp / "mined.jsonl"
        cli("mine", str(ROOT / "configs/mine_world_bm25.yaml"), f"output={mined}", f"data.world.num_scenes={args.scenes}",
            "num_negatives=1")
        results = {}
        for label, hard in (("mined hard negatives", "true"), ("in-batch only", "false")):
            out = tmp / label.replace(" ", "_")
            cli("train", str(ROOT / "configs/simcse_sup_world.yaml"), f"output_dir={out}", "data.source=files",
                f"data.path={mined}", "data.eval_fraction=0", f"objective.eval_pairs={tmp / 'eval.jsonl'}",
                f"objective.hard_negatives={hard}", f"train.max_steps={args.steps}", "train.eval_every=0",
                "train.save_every=0", "train.progress=false")
            results[label] = json.loads((out / "metrics.json").read_text())["eval"]
        keys = [k for k in ("recall@1", "mrr@10", "hard_negative_accuracy") if k in results["in-batch only"]]
        print(f"# world {args.scenes} scenes, BM25-mined negatives (1 per pair), {args.steps} steps, held-out pairs")
        for label, metrics in results.items():
            print(f"{label:22s} " + "  ".join(f"{k} {metrics[k]:.3f}" for k in keys))


if __name__ == "__main__":
    main()
