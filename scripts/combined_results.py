"""Does combining objectives help? A combined recipe (``objectives:``) against each of its objectives alone, on
the evaluations each objective has, over several seeds (the real CLI, one run after another).

Settings (same model, data, batch size, learning rate and schedule):
  alone, equal steps      - the recipe with one of its objectives, for the recipe's steps
  alone, equal time       - the same, for as many steps as fit in the combined run's training time
  combined                - the recipe as it is

    python scripts/combined_results.py configs/mlm_simcse_world.yaml --seeds 0,1,2
    python scripts/combined_results.py configs/simclr_rotnet_world.yaml --seeds 0 train.max_steps=200
    python scripts/combined_results.py configs/coca_world.yaml --seeds 0 train.max_steps=300

Prints one markdown table (mean +- std over seeds, and the spread) and writes the runs' figures to
runs/combined_results/<recipe>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the headline metrics of each objective's own evaluation (lower is better for perplexities)
METRICS = {
    "mlm": ["perplexity"],
    "clm": ["perplexity"],
    "simcse": ["sts_spearman", "recall@1"],
    "clip": ["zero_shot_top1", "image_to_text_recall@1"],
    "captioning": ["caption_perplexity", "caption_names_class"],
}
IMAGE = ["knn_top1", "linear_probe_top1"]


def run(raw: dict, out: Path, overrides: list[str]) -> dict:
    recipe = out.with_suffix(".yaml")
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mmssl", "train", str(recipe), f"output_dir={out}",
                           "train.progress=false", "train.save_every=0", "train.eval_every=0", *overrides],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{out.name} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())


def headline(label: str, name: str, evaluation: dict) -> dict[str, float]:
    keys = METRICS.get(name, IMAGE)
    return {f"{label}/{k}": evaluation[f"{label}/{k}"] for k in keys if f"{label}/{k}" in evaluation}


def main() -> None:
    from mmssl.recipes import apply_overrides, read_yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--no-equal-time", action="store_true", help="skip the equal-wall-time runs")
    args = parser.parse_intermixed_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    raw = apply_overrides(read_yaml(args.recipe), [o for o in args.overrides])
    entries = raw["objectives"]
    labels = [e.get("label", e["name"]) for e in entries]
    names = dict(zip(labels, (e["name"] for e in entries)))
    steps = int(raw["train"]["max_steps"])
    rows: dict[str, list[dict]] = {}
    seconds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mmssl-combined-") as tmp:
        for seed in seeds:
            common = [f"seed={seed}"]
            combined = run(raw, Path(tmp) / f"combined-{seed}", common)
            rows.setdefault("combined", []).append({k: v for label in labels
                                                    for k, v in headline(label, names[label], combined["eval"]).items()})
            seconds.setdefault("combined", []).append(combined["train_seconds"])
            print(f"seed {seed} combined: {rows['combined'][-1]} ({combined['train_seconds']:.0f} s)", flush=True)
            for entry, label in zip(entries, labels):
                alone_raw = {**raw, "objectives": [{**entry, "weight": 1.0}]}
                alone = run(alone_raw, Path(tmp) / f"{label}-{seed}", common)
                key = f"{label} alone, {steps} steps"
                rows.setdefault(key, []).append(headline(label, names[label], alone["eval"]))
                seconds.setdefault(key, []).append(alone["train_seconds"])
                print(f"seed {seed} {key}: {rows[key][-1]} ({alone['train_seconds']:.0f} s)", flush=True)
                if args.no_equal_time:
                    continue
                more = max(steps, round(steps * combined["train_seconds"] / alone["train_seconds"]))
                timed = run(alone_raw, Path(tmp) / f"{label}-time-{seed}", [*common, f"train.max_steps={more}"])
                key = f"{label} alone, equal time"
                rows.setdefault(key, []).append({**headline(label, names[label], timed["eval"]), "steps": more})
                seconds.setdefault(key, []).append(timed["train_seconds"])
                print(f"seed {seed} {key} ({more} steps): {rows[key][-1]} ({timed['train_seconds']:.0f} s)", flush=True)

    columns = [f"{label}/{k}" for label in labels for k in METRICS.get(names[label], IMAGE)]
    print(f"\n{Path(args.recipe).name}, {steps} steps, seeds {args.seeds}: mean +- std over seeds [min, max]\n")
    print("| setting | train s | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for setting, results in rows.items():
        cells = []
        for column in columns:
            values = [r[column] for r in results if column in r]
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f} "
                             f"[{min(values):.3f}, {max(values):.3f}]")
        counts = sorted({r["steps"] for r in results if "steps" in r})
        label = setting + (f" ({counts[0]}" + (f"-{counts[-1]}" if len(counts) > 1 else "") + " steps)" if counts else "")
        print(f"| {label} | {statistics.mean(seconds[setting]):.0f} | " + " | ".join(cells) + " |")
    out = ROOT / "runs" / "combined_results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{Path(args.recipe).stem}.json").write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
