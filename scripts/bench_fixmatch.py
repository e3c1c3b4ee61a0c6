"""FixMatch against SSL-then-probe and the supervised baseline at a few label fractions, on the built-in world's
shape task, several seeds, equal steps: trains (the real CLI, one process at a time)

* ``fixmatch``: configs/fixmatch_world.yaml at each fraction (classifier top-1, and a linear probe of its frozen
  backbone fitted on the labelled rows only);
* ``supervised``: the same recipe with ``objective.lambda_u=0`` (cross-entropy on the labelled batch alone);
* ``simclr``: configs/simclr_world.yaml once per seed, then a linear probe of the frozen backbone fitted on each
  fraction's labelled rows (`mmssl.data.label_fraction.labelled_rows`, the same rows as FixMatch's for the seed);

and prints one markdown table (mean and standard deviation over seeds, top-1 on the held-out eval split).
Finished runs are kept in ``--out`` (results.json) and skipped when the script is run again.

    python scripts/bench_fixmatch.py [--seeds 0,1,2] [--fractions 0.01,0.1] [--out runs/bench_fixmatch] [KEY=VALUE ...]

KEY=VALUE overrides (e.g. ``train.max_steps=200 objective.image_size=16``) apply to every run; keys under
``objective.`` that only FixMatch has (label_fraction, mu, threshold, lambda_u, head) are left out of SimCLR's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXMATCH_ONLY = ("objective.label_fraction", "objective.mu", "objective.threshold", "objective.lambda_u",
                 "objective.head", "objective.views")


def train(config: str, target: Path, overrides: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmssl", "train", str(ROOT / config), f"output_dir={target}",
                           "train.overwrite=true", "train.progress=false", "train.eval_every=0",
                           "objective.eval_before=false", *overrides], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{config} {overrides} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((target / "metrics.json").read_text())
    logged = [json.loads(line) for line in (target / "log.jsonl").read_text().splitlines()]
    last = [e for e in logged if e.get("event") == "train"][-3:]  # the last three logging windows
    return {"wall_s": time.perf_counter() - started, "train_s": metrics.get("train_seconds"), **metrics["eval"],
            **{f"last_{k}": statistics.mean(e[k] for e in last) for k in (
                "mask_rate", "pseudo_label_accuracy", "confident_correct_rate", "supervised_loss") if k in last[-1]}}


def probe_on_fractions(target: Path, seed: int, fractions: list[float]) -> dict[str, float]:
    """Linear probes of the exported backbone in `target`, each fitted on one fraction's labelled rows."""
    import torch

    from mmssl.data.image_sources import load_images
    from mmssl.data.label_fraction import labelled_rows
    from mmssl.eval.frozen_backbone import ProbeSettings
    from mmssl.models.vision import load_backbone
    from mmssl.objectives.fixmatch import labelled_probe_top1
    from mmssl.recipes import parse_recipe

    import yaml

    recipe = parse_recipe(yaml.safe_load((target / "recipe.yaml").read_text()))
    size = recipe.objective.image_size
    backbone = load_backbone(str(target))
    splits = load_images(recipe.data, size, recipe.seed)
    s = ProbeSettings(size, backbone.mean, backbone.std, num_classes=len(splits.class_names), seed=seed)
    out = {}
    for fraction in fractions:
        keep = labelled_rows(splits.train.labels, fraction, seed, splits.class_names)
        out[f"probe_{fraction}"] = labelled_probe_top1(backbone, splits.train, splits.eval, keep, s,
                                                       torch.device("cpu"))
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fractions", default="0.01,0.1")
    parser.add_argument("--methods", default="simclr,supervised,fixmatch")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fixmatch")
    parser.add_argument("overrides", nargs="*", help="recipe overrides applied to every run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    methods = args.methods.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results: dict[str, dict] = json.loads(store.read_text()) if store.exists() else {}
    common = [o for o in args.overrides if not o.startswith(FIXMATCH_ONLY)]

    def record(key: str, make) -> None:  # noqa: ANN001 - a thunk returning the run's result
        if key in results:
            return
        print(f"[bench_fixmatch] {key} ...", file=sys.stderr, flush=True)
        results[key] = make()
        store.write_text(json.dumps(results, indent=1))

    for seed in seeds:
        if "simclr" in methods:
            target = args.out / f"simclr_s{seed}"
            record(f"simclr/s{seed}", lambda: {**train("configs/simclr_world.yaml", target, [f"seed={seed}", *common]),
                                               **probe_on_fractions(target, seed, fractions)})
        for fraction in fractions:
            for method, extra in (("supervised", ["objective.lambda_u=0"]), ("fixmatch", [])):
                if method in methods:
                    target = args.out / f"{method}_f{fraction}_s{seed}"
                    record(f"{method}/{fraction}/s{seed}", lambda: train(
                        "configs/fixmatch_world.yaml", target,
                        [f"seed={seed}", f"objective.label_fraction={fraction}", *args.overrides, *extra]))

    def column(key_of, metric: str) -> list[float]:
        return [results[k][metric] for k in map(key_of, seeds) if k in results and metric in results[k]]

    print(f"overrides: {' '.join(args.overrides) or '(none)'}; seeds {args.seeds}; top-1 (%) on the held-out split, "
          "mean ± std over seeds")
    print("| labels | method | classifier top-1 | frozen probe on the labelled rows | kNN (all labels) "
          "| pseudo-labels used / their accuracy (last 3 log windows) | train s |")
    print("|---|---|---|---|---|---|---|")
    for fraction in fractions:
        ssl = column(lambda s: f"simclr/s{s}", f"probe_{fraction}")
        if ssl:
            knn = column(lambda s: f"simclr/s{s}", "knn_top1")
            secs = column(lambda s: f"simclr/s{s}", "train_s")
            print(f"| {100 * fraction:g} % | SimCLR then probe | - | {mean_std(ssl)} | {mean_std(knn)} | - "
                  f"| {statistics.mean(secs):.0f} |")
        for method, label in (("supervised", "supervised only (lambda_u = 0)"), ("fixmatch", "FixMatch")):
            key = lambda s, m=method: f"{m}/{fraction}/s{s}"  # noqa: E731
            top1 = column(key, "classifier_top1")
            if not top1:
                continue
            mask, correct = column(key, "last_mask_rate"), column(key, "last_confident_correct_rate")
            pseudo = "-" if not mask else (f"{100 * statistics.mean(mask):.1f} % / " + (
                f"{100 * sum(correct) / sum(mask):.0f} %" if statistics.mean(mask) >= 0.005 else "n/a"))
            secs = column(key, "train_s")
            print(f"| {100 * fraction:g} % | {label} | {mean_std(top1)} | {mean_std(column(key, 'labelled_probe_top1'))}"
                  f" | {mean_std(column(key, 'knn_top1'))} | {pseudo} | {statistics.mean(secs):.0f} |")


if __name__ == "__main__":
    main()
