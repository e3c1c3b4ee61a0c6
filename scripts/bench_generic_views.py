"""Generic (modality-agnostic) views against each modality's hand-made views, at equal steps: trains the shipped
world recipes through the real CLI (one process per run, one after another) and prints one table per modality.

* image: SimCLR (configs/simclr_world.yaml) with its ``simclr`` preset, patch masking (preset ``generic``), DACL
  mixup, mask + mixup; kNN and linear-probe top-1 on the held-out shape task;
* text: unsupervised SimCSE (configs/simcse_unsup_world.yaml) with dropout only, lexical views (synonym/insert,
  configs/simcse_views_world.yaml) and the word-mask view; the world's paraphrase metrics;
* clip: CLIP (configs/clip_world.yaml) with its default views and with patch masking instead; zero-shot top-1
  and retrieval.

    python scripts/bench_generic_views.py image [--seeds 0,1,2] [--steps 300] [--out DIR] [KEY=VALUE ...]
    python scripts/bench_generic_views.py table [--out DIR]       # the tables of the runs finished so far

A run whose metrics.json exists is not trained again (``--rerun`` to force). Overrides apply to every run of
the suite (e.g. ``train.batch_size=64``).
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

SUITES: dict[str, tuple[str, dict[str, list[str]]]] = {
    "image": ("simclr_world.yaml", {
        "simclr preset": [],
        "mask (generic)": ["objective.views={preset: generic}"],
        "mixup (DACL)": ["objective.views={preset: none, mixup: 1.0}"],
        "mask + mixup": ["objective.views={preset: generic, mixup: 1.0}"],
        "simclr + mask": ["objective.views={preset: simclr, crop_scale: [0.4, 1.0], hue: 0.5, saturation: 0.8, "
                          "mask_ratio: 0.25}"],
    }),
    "text": ("simcse_unsup_world.yaml", {
        "dropout only": [],
        "lexical (synonym/insert)": ["objective.text_views=[{type: synonym, p: 0.2}, {type: insert, p: 0.1}]"],
        "word mask (generic)": ["objective.text_views=[{type: mask, p: 0.15}]"],
    }),
    "clip": ("clip_world.yaml", {
        "default views": [],
        "mask (generic)": ["objective.views={random_resized_crop: false, mask_ratio: 0.5}"],
    }),
}
COLUMNS = {  # the metrics shown per suite: eval keys that end with one of these, in the runs' order
    "image": ["knn_top1", "linear_probe_top1"],
    "text": ["recall@1", "mrr@10", "sts_spearman", "alignment", "uniformity"],
    "clip": ["zero_shot_top1", "recall@1", "recall@5"],
}


def shown(suite: str, evals: list[dict]) -> list[str]:
    """The keys of `COLUMNS[suite]` every run reports (random-init floors and per-class figures left out)."""
    keys = [k for k in evals[0] if not k.startswith("random_init") and all(k in e for e in evals)]
    return [k for pattern in COLUMNS[suite] for k in keys if k.endswith(pattern)]
SUITE_ARGS = {  # every run of a suite, before the command line's overrides
    "image": ["objective.eval_before=false"],
    "text": [],
    "clip": ["train.save_every=0"],
}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def run_dir(out: Path, suite: str, variant: str, seed: int) -> Path:
    return out / suite / slug(variant) / f"seed{seed}"


def train(suite: str, variant: str, seed: int, steps: int | None, out: Path, overrides: list[str],
          rerun: bool) -> None:
    config, variants = SUITES[suite]
    target = run_dir(out, suite, variant, seed)
    if (target / "metrics.json").is_file() and not rerun:
        return
    extra = [f"train.max_steps={steps}", f"train.eval_every={steps}"] if steps else []
    cmd = [sys.executable, "-m", "mmssl", "train", str(ROOT / "configs" / config), f"output_dir={target}",
           f"seed={seed}", "train.overwrite=true", "train.progress=false", *SUITE_ARGS[suite], *extra,
           *variants[variant], *overrides]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{suite}/{variant}/seed{seed} failed:\n{done.stderr[-3000:]}")
    (target / "bench_command.json").write_text(json.dumps({"cmd": cmd[1:], "wall_s": time.perf_counter() - started}))
    print(f"done {suite} / {variant} / seed {seed} in {time.perf_counter() - started:.0f} s", flush=True)


def table(out: Path, suite: str) -> str:
    """Mean ± sd over the finished seeds of each variant, and in brackets the gap in points (x 100) to the suite's
    first row (the hand-made views)."""
    _, variants = SUITES[suite]
    rows, first = [], None
    for variant in variants:
        runs = sorted(run_dir(out, suite, variant, 0).parent.glob("seed*/metrics.json"))
        if not runs:
            continue
        metrics = [json.loads(p.read_text()) for p in runs]
        evals = [m["eval"] for m in metrics]
        cols = shown(suite, evals)
        means = {c: statistics.mean(e[c] for e in evals) for c in cols}
        sds = {c: statistics.stdev(e[c] for e in evals) if len(evals) > 1 else 0.0 for c in cols}
        first = first or means
        rows.append((variant, len(evals), metrics[0]["steps"], cols, means, sds, first))
    if not rows:
        return f"({suite}: no finished runs)"
    cols = rows[0][3]
    lines = [f"| {suite} view | seeds | steps | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for variant, n, steps, _, means, sds, ref in rows:  # (x pts): the gap to the first (hand-made) row
        cells = [f"{means[c]:.3f} ± {sds[c]:.3f} ({100 * (means[c] - ref[c]):+.1f})" if c in means and c in ref
                 else "-" for c in cols]
        lines.append(f"| {variant} | {n} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=[*SUITES, "table"])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps of every run (default: the recipe's)")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_generic_views")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("overrides", nargs="*", help="recipe overrides applied to every run")
    args = parser.parse_intermixed_args()
    if args.suite != "table":
        names = args.variants.split(",") if args.variants else list(SUITES[args.suite][1])
        for seed in (int(s) for s in args.seeds.split(",")):
            for variant in names:
                train(args.suite, variant, seed, args.steps, args.out, args.overrides, args.rerun)
    for suite in SUITES if args.suite == "table" else [args.suite]:
        print(table(args.out, suite), "\n", flush=True)


if __name__ == "__main__":
    main()
