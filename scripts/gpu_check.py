"""Every shipped training recipe on CUDA with bf16 (a short run each), then each benchmark once on CUDA; one table.

Run it as ``scripts/gpu_check.sh`` whenever a GPU is at hand (about 8 minutes on one H200) and put the table in
the README with the date, GPU and versions. Each job is its own process with its own time limit, so one failure
or hang costs only its slot; the table says which failed and keeps the tail of its output in ``--out``.

    python scripts/gpu_check.py                                  # everything, on CUDA
    python scripts/gpu_check.py --device cpu --steps 2 --skip-bench --only mlm_world   # the plumbing, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_TRAINING = ("augment_", "mine_", "curate_")  # configs of `mmssl augment` / `mine` / `curate`: CPU data jobs
EVAL_KEYS = ("zero_shot_top1", "knn_top1", "linear_probe_top1", "spearman", "retrieval_recall@1", "recall@1",
             "mrr@10", "perplexity", "masked_accuracy", "accuracy")


def benchmarks(device: str) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of one run of each benchmark on `device`."""
    py = sys.executable
    return [
        ("bench_lm mlm+clm", [py, "scripts/bench_lm.py", "--device", device, "--repeats", "1", "--steps", "25",
                              "--warmup", "5"], 150),
        ("bench_contrastive", [py, "scripts/bench_contrastive.py", "--device", device, "--batch", "256", "--repeats",
                               "1", "--steps", "20", "--skip-cached"], 120),
        ("bench_clip", [py, "scripts/bench_clip.py", "--device", device, "--batch", "256", "--workers", "8",
                        "--repeats", "1", "--steps", "30"], 120),
        ("bench_streaming", [py, "scripts/bench_streaming.py", "--device", device, "--sizes", "10000", "--parts",
                             "loader,clip,mlm", "--workers", "8", "--repeats", "1", "--text-mb", "200"], 240),
        ("bench_mining dense", [py, "scripts/bench_mining.py", "--device", device, "--repeats", "1", "--docs", "20000",
                                "--queries", "500", "--skip-rank-bm25"], 90),
    ]


# recipes that fine-tune another recipe's output: (that recipe, the key to point at its output folder)
STAGES = {"negclip_world": ("clip_pairs_world", "model.pretrained")}


def recipes(only: list[str] | None) -> list[Path]:
    found = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith(NOT_TRAINING))
    if only:
        missing = set(only) - {p.stem for p in found}
        if missing:
            raise SystemExit(f"--only: no training recipe named {sorted(missing)} in configs/")
        needed = set(only) | {STAGES[name][0] for name in only if name in STAGES}
        found = [p for p in found if p.stem in needed]
    return sorted(found, key=lambda p: p.stem in STAGES)  # stage 2 after the stage it starts from


def run(command: list[str], limit: int, log: Path) -> tuple[str, float, str]:
    """(status, seconds, output) of one job; the output also goes to `log`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        status, output = ("ok" if done.returncode == 0 else f"exit {done.returncode}"), done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        # the partial output comes back as bytes even with text=True
        parts = [p.decode(errors="replace") if isinstance(p, bytes) else p for p in (exc.stdout, exc.stderr) if p]
        status, output = f"timeout {limit}s", "".join(parts)
    log.write_text(output, encoding="utf-8")
    return status, time.perf_counter() - start, output


def recipe_figures(run_dir: Path) -> str:
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        return ""
    metrics = json.loads(metrics_file.read_text())
    found = [f"{k} {v:.3g}" for k, v in _flat(metrics.get("eval", {})).items()
             if any(k.endswith(key) for key in EVAL_KEYS) and isinstance(v, (int, float))][:3]
    return f"{metrics.get('steps', '?')} steps in {metrics.get('train_seconds', float('nan')):.1f} s" + (
        "; " + ", ".join(found) if found else "")


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


RATIO_LINE = re.compile(r"(\d+\.\d+x|ratio|->|peak GPU)")


def bench_figures(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if RATIO_LINE.search(line) and "repeat" not in line]
    return " | ".join(lines[-4:])[:400]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=60, help="training steps per recipe")
    parser.add_argument("--recipe-limit", type=int, default=60, help="seconds allowed per recipe")
    parser.add_argument("--only", help="comma-separated recipe names (configs/NAME.yaml)")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--out", help="folder for the runs and logs (default: a new temporary folder)")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device is visible (use --device cpu to check the plumbing)")
    out = Path(args.out or tempfile.mkdtemp(prefix="mmssl-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"# gpu_check: {args.device}, {args.steps} steps per recipe, logs in {out}", flush=True)
    _print_environment(args.device)
    rows: list[tuple[str, str, float, str]] = []
    for recipe in recipes(args.only.split(",") if args.only else None):
        run_dir = out / recipe.stem
        command = [sys.executable, "-m", "mmssl", "train", str(recipe), f"output_dir={run_dir}",
                   f"train.max_steps={args.steps}", "train.overwrite=true", "train.progress=false",
                   "train.save_every=0", f"train.cpu={'true' if args.device == 'cpu' else 'false'}",
                   f"train.mixed_precision={'bf16' if args.device == 'cuda' else 'auto'}"]
        if recipe.stem in STAGES:
            first, key = STAGES[recipe.stem]
            command.append(f"{key}={out / first}")
        status, seconds, _ = run(command, args.recipe_limit, out / f"{recipe.stem}.log")
        rows.append((f"recipe {recipe.stem}", status, seconds, recipe_figures(run_dir)))
        print(f"  {rows[-1][0]:32s} {status:10s} {seconds:6.1f} s  {rows[-1][3]}", flush=True)
    if not args.skip_bench:
        for name, command, limit in benchmarks(args.device):
            status, seconds, output = run(command, limit, out / f"{name.split()[0]}.log")
            rows.append((name, status, seconds, bench_figures(output)))
            print(f"  {name:32s} {status:10s} {seconds:6.1f} s  {rows[-1][3]}", flush=True)
    print("\n| job | status | wall s | figures |\n|---|---|---|---|")
    for name, status, seconds, figures in rows:
        print(f"| {name} | {status} | {seconds:.0f} | {figures} |")
    failed = [r[0] for r in rows if r[1] != "ok"]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


def _print_environment(device: str) -> None:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (CPU)"
    print(f"# {time.strftime('%Y-%m-%d')}; GPU {gpu}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; {os.cpu_count()} CPUs", flush=True)


if __name__ == "__main__":
    main()
