"""Label-efficiency table of issue 26's protocol: SimCLR per configs/simclr_world.yaml at 300 steps (seeds 0, 1, 2),
then `mmssl finetune` at 1/10/100 % of the labels (linear probe and full fine-tune, pretrained vs random init),
plus the cross-entropy baseline (random init, full fine-tune on 100 % of the labels, 300 steps, batch 128, the
recipe's AdamW 3e-3). Steps already done (a folder with its metrics.json / finetune.json) are skipped, so the script
can be stopped and rerun; `--table-only` prints the markdown table of what exists.

    python scripts/bench_finetune.py --root runs/bench_finetune --seeds 0 1 2
    python scripts/bench_finetune.py --root runs/bench_finetune --table-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

MMSSL = [sys.executable, "-m", "mmssl"]


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "w", encoding="utf-8") as handle:
        subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, check=True)


def bench(root: Path, seed: int, args: argparse.Namespace) -> None:
    ssl = root / f"simclr_s{seed}"
    if not (ssl / "metrics.json").is_file():
        run([*MMSSL, "train", "configs/simclr_world.yaml", f"train.max_steps={args.ssl_steps}",
             f"train.eval_every={args.ssl_steps}", f"seed={seed}", f"output_dir={ssl}", "train.progress=false"],
            root / f"simclr_s{seed}.log")
    curve = root / f"finetune_s{seed}"
    if not (curve / "finetune.json").is_file():
        run([*MMSSL, "finetune", str(ssl), "--out", str(curve), "--labels", "0.01,0.1,1", "--mode", args.mode,
             "--steps", str(args.steps), "--lr", str(args.lr)], root / f"finetune_s{seed}.log")
    ce = root / f"ce_s{seed}"
    if args.ce and not (ce / "finetune.json").is_file():
        run([*MMSSL, "finetune", str(ssl), "--out", str(ce), "--init", "random", "--mode", "full", "--labels", "1",
             "--steps", str(args.ce_steps), "--batch-size", "128", "--lr", str(args.ce_lr), "--no-save-models"],
            root / f"ce_s{seed}.log")


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(root: Path) -> str:
    """Markdown: mean ± std (over seeds) of held-out top-1 per (init, mode) and label fraction."""
    cells: dict[tuple[str, str, float], list[float]] = {}
    seeds, settings, reference = [], {}, []
    for path in sorted(root.glob("finetune_s*/finetune.json")):
        data = json.loads(path.read_text())
        seeds.append(data["seed"])
        settings = data["settings"]
        reference.append(data["reference"].get("linear_probe_top1"))
        for row in data["results"]:
            cells.setdefault((row["init"], row["mode"], row["fraction"]), []).append(row["top1"])
    fractions = sorted({k[2] for k in cells})
    lines = [f"Held-out top-1 (%), world shapes, seeds {seeds} (mean ± std); full fine-tune {settings.get('steps')} "
             f"steps, AdamW lr {settings.get('learning_rate')}, batch {settings.get('batch_size')}.", "",
             "| encoder | adaptation | " + " | ".join(f"{f * 100:g} % labels" for f in fractions) + " |",
             "|---|---|" + "---|" * len(fractions)]
    for init in ("pretrained", "random_init"):
        for mode in ("probe", "full"):
            if any((init, mode, f) in cells for f in fractions):
                lines.append(f"| {'SimCLR 300 steps' if init == 'pretrained' else 'random init'} | "
                             f"{'linear probe' if mode == 'probe' else 'full fine-tune'} | "
                             + " | ".join(_cell(cells.get((init, mode, f), [])) for f in fractions) + " |")
    if any(r is not None for r in reference):
        lines.append(f"| SimCLR 300 steps | mmssl eval linear probe (reference) | | | "
                     f"{_cell([r for r in reference if r is not None])} |")
    ce = [json.loads(p.read_text()) for p in sorted(root.glob("ce_s*/finetune.json"))]
    if ce:
        values = [r["top1"] for d in ce for r in d["results"]]
        s = ce[0]["settings"]
        lines += ["", f"Cross-entropy baseline (random init, full fine-tune, 100 % labels, {s['steps']} steps, batch "
                      f"{s['batch_size']}, AdamW lr {s['learning_rate']}, seeds {[d['seed'] for d in ce]}): "
                      f"{_cell(values)} % top-1"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/bench_finetune"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ssl-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300, help="steps of each full fine-tune of the curve")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mode", default="both", choices=("probe", "full", "both"))
    parser.add_argument("--no-ce", dest="ce", action="store_false", help="skip the cross-entropy baseline")
    parser.add_argument("--ce-steps", type=int, default=300)
    parser.add_argument("--ce-lr", type=float, default=3e-3, help="the SimCLR recipe's AdamW learning rate")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for seed in args.seeds:
            bench(args.root, seed, args)
    print(table(args.root))


if __name__ == "__main__":
    main()
