"""Throughput and peak memory of `mmssl curate` as the data grows.

The built-in world (64-pixel images, one scene per sample, seeded by the size) is prepared as WebDataset
shards at each size (or, with --data wordnet, WordNet's glosses are written as JSON Lines and curated as text);
each measurement curates them in a fresh child process (`mmssl.curate.curate` on configs/curate_world.yaml
with overrides) and reports samples/s of the curate call (read / its wall time; interpreter start and the
imports, torch among them, excluded) and the child's peak RSS (VmHWM of /proc/self/status right after the
call; also after the imports). ru_maxrss from os.wait4 is kept in the JSON: it covers the child's whole life
and read about 680 MB here even where VmHWM stayed at 555 MB. Filter sets: the config's (caption, image,
language, exact_dedup by image, near_dedup; for text: text, language, exact and near dedup), none (read and
write only) and each filter alone. Growth: the least-squares slope of peak RSS over samples read and over
samples kept (the deduplicators remember only kept samples).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_curate.py --sizes 4000 16000 40000 \
        --filters default none exact_dedup near_dedup --work /tmp/bench-curate --out build/bench_curate.json
    ... --sizes 16000 --filters caption image language --work /tmp/bench-curate --out build/bench_curate_filters.json
    ... --data wordnet --sizes 5000 20000 80000 --filters default none exact_dedup near_dedup \
        --work /tmp/bench-curate --out build/bench_curate_text.json

The world's captions are templates (near_dedup keeps about 1,800 of 40,000), so the memory a kept MinHash costs
is measured on text, where nearly every gloss is distinct.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "curate_world.yaml"
FILTERS = ("caption", "image", "text", "language", "exact_dedup", "near_dedup")
TEXT = ["kind=text", "filters.caption=null", "filters.image=null"]  # --data wordnet: the text filters
CHILD = """
import json, sys, time
hwm = lambda: int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024  # peak RSS, MB
start = time.perf_counter()
from mmssl.curate import curate, load_curate_config
import datasketch, py3langid.langid, mmssl.data.images, mmssl.data.stream_sources  # what curate imports lazily
imports = time.perf_counter() - start
rss = hwm()
cfg = load_curate_config(sys.argv[1], sys.argv[2:])
start = time.perf_counter()
summary = curate(cfg)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "imports": imports, "rss_after_imports": rss, "peak": hwm(), **summary}))
"""


def filter_sets(names: list[str], text: bool) -> dict[str, list[str]]:
    """Overrides per filter set: default (the config; for text its language and dedup filters and the default
    text filter), none, or one filter alone."""
    sets = {}
    for name in names:
        if name == "default":
            sets[name] = TEXT if text else ["filters.text=null"]
        elif name == "none":
            sets[name] = [f"filters.{f}=null" for f in FILTERS]
        else:
            sets[name] = [f"filters.{f}=null" for f in FILTERS if f != name]
        if text and name != "default":
            sets[name] = ["kind=text", *sets[name]]
    return sets


def world_shards(work: Path, size: int) -> Path:
    """The world's `size` scenes at 64 pixels as shards of 1000, prepared once per work folder in a child
    process (so that this process stays small: a forked child's ru_maxrss starts at its parent's RSS)."""
    out = work / f"world-{size}"
    start = time.perf_counter()
    code = ("import sys; from mmssl.config import DataConfig, WorldConfig; from mmssl.prepare import prepare; "
            "n = int(sys.argv[2]); prepare(DataConfig(source='world', world=WorldConfig(num_scenes=n, image_size=64, "
            "seed=n)), sys.argv[1], 'image_text', shard_size=1000, workers=2)")
    subprocess.run([sys.executable, "-c", code, str(out), str(size)], check=True, cwd=ROOT)
    print(f"world {size}: prepared in {time.perf_counter() - start:.0f} s "
          f"({sum(f.stat().st_size for f in out.glob('*.tar')) / 2**20:.0f} MiB)", flush=True)
    return out


def wordnet_lines(work: Path, size: int) -> Path:
    """The first `size` WordNet 3.0 glosses (distinct short English texts: dedup keeps nearly all) as JSON Lines."""
    out = work / f"wordnet-{size}.jsonl"
    lines = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in Path(f"/usr/share/wordnet/data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("  ") and "|" in line:
                lines.append(json.dumps({"text": line.split("|", 1)[1].strip()}) + "\n")
    if size > len(lines):
        raise SystemExit(f"WordNet holds {len(lines)} glosses, fewer than {size}")
    out.write_text("".join(lines[:size]))
    return out


def measure(shards: Path, out_dir: Path, overrides: list[str]) -> dict:
    """Curate in a child process; its timing, summary and peak RSS."""
    args = [sys.executable, "-c", CHILD, str(CONFIG), f"input.path={shards}", f"output_dir={out_dir}", *overrides]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(args, stdout=out, stderr=err, text=True, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(f"curate failed ({child.returncode}): {stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"read": result["read"], "kept": result["kept"], "dropped": result["dropped"],
            "curate_seconds": round(result["seconds"], 2), "child_seconds": round(time.perf_counter() - start, 2),
            "import_seconds": round(result["imports"], 2), "rss_after_imports_mb": round(result["rss_after_imports"], 1),
            "samples_per_s": round(result["read"] / result["seconds"], 1), "peak_rss_mb": round(result["peak"], 1),
            "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1)}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[5000, 20000, 80000])
    parser.add_argument("--filters", nargs="+", default=["default", "none", *FILTERS],
                        choices=["default", "none", *FILTERS])
    parser.add_argument("--data", choices=["world", "wordnet"], default="world",
                        help="image-text world shards, or WordNet glosses as text (kind=text; up to 117k)")
    parser.add_argument("--work", help="a folder for the shards and outputs (default: a temporary one)")
    parser.add_argument("--out", help="JSON file for the numbers")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-curate-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for size in args.sizes:
        shards = world_shards(work, size) if args.data == "world" else wordnet_lines(work, size)
        for name, overrides in filter_sets(args.filters, args.data == "wordnet").items():
            out_dir = work / "curated" / f"{args.data}-{name}-{size}"
            if out_dir.exists():
                subprocess.run(["rm", "-r", str(out_dir)], check=True)
            row = {"size": size, **measure(shards, out_dir, overrides)}
            results.setdefault(name, []).append(row)
            print(f"{name} {size}: {row}", flush=True)
    print("\n| filters | samples | kept | curate s | samples/s | peak RSS MB | RSS after imports MB |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for r in rows:
            print(f"| {name} | {r['read']} | {r['kept']} | {r['curate_seconds']:.1f} | {r['samples_per_s']:.0f} | "
                  f"{r['peak_rss_mb']:.1f} | {r['rss_after_imports_mb']:.1f} |")
    print("\n| filters | RSS MB per 1,000 read | bytes per read sample | bytes per kept sample |\n|---|---|---|---|")
    growth = {}
    for name, rows in results.items():
        if len(rows) > 1:
            per_read = slope([r["read"] for r in rows], [r["peak_rss_mb"] * 2**20 for r in rows])
            per_kept = slope([r["kept"] for r in rows], [r["peak_rss_mb"] * 2**20 for r in rows]) \
                if len({r["kept"] for r in rows}) > 1 else float("nan")
            growth[name] = {"mb_per_1000_read": per_read * 1000 / 2**20, "bytes_per_read": per_read,
                            "bytes_per_kept": per_kept}
            print(f"| {name} | {per_read * 1000 / 2**20:.2f} | {per_read:.0f} | {per_kept:.0f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "runs": results, "growth": growth},
                                             indent=1))
    print(f"\nshards and outputs in {work}")


if __name__ == "__main__":
    main()
