"""The README's vision results table: trains each shipped image SSL recipe on the built-in world (the real CLI,
one process each, one after another) and prints kNN and linear-probe accuracy on the held-out shape task, the
random-init floor of the same encoder, collapse figures and wall time.

    python scripts/vision_results.py [--methods simclr,moco,byol,simsiam] [--out runs/vision_results] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(method: str, out: Path, overrides: list[str]) -> dict:
    target = out / method
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmssl", "train", str(ROOT / f"configs/{method}_world.yaml"),
                           f"output_dir={target}", "train.overwrite=true", "train.progress=false", *overrides],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((target / "metrics.json").read_text())
    return {"method": method, "wall_s": time.perf_counter() - started, "steps": metrics["steps"],
            "train_s": metrics["train_seconds"], **metrics["eval"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="simclr,moco,byol,simsiam")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "vision_results")
    parser.add_argument("overrides", nargs="*", help="recipe overrides applied to every method")
    args = parser.parse_args()
    rows = [run(m, args.out, args.overrides) for m in args.methods.split(",")]
    print("| method | kNN top-1 | linear probe top-1 | random init: kNN / probe | probe gain | feature std x sqrt(d) "
          "| feature eff. rank | embedding std x sqrt(d) | steps | train s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = 100 * (r["linear_probe_top1"] - r["random_init_linear_probe_top1"])
        print(f"| {r['method']} | {r['knn_top1']:.3f} | {r['linear_probe_top1']:.3f} | "
              f"{r['random_init_knn_top1']:.3f} / {r['random_init_linear_probe_top1']:.3f} | {gain:+.1f} pts | "
              f"{r['feature_std_sqrt_d']:.2f} | {r['feature_effective_rank']:.1f} | {r.get('embedding_std_sqrt_d', float('nan')):.2f} | "
              f"{r['steps']} | {r['train_s']:.0f} | {r['wall_s']:.0f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
