"""`mmssl sweep RECIPE key=v1,v2 key2=a,b ...`: a recipe over the grid of its overrides, one process per run.

Each run is ``mmssl train RECIPE output_dir=OUT/<run> <its overrides>`` in its own process (behind a launcher such
as ``torchrun --standalone --nproc_per_node 2`` if given; ``--dry-run`` prints the commands, to spread them over
a cluster's scheduler instead). A finished run is kept and not trained again, an interrupted one resumes from its
last checkpoint, so a sweep can be rerun until it is complete. The runs' final metrics go into one table
(``OUT/sweep.csv``, ``OUT/sweep.json``) and one report (``OUT/report/index.html``) that also draws each metric
against each swept value.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmssl.errors import MmsslError, RecipeError


@dataclass(frozen=True)
class SweepRun:
    name: str
    output_dir: Path
    values: dict[str, Any]  # the swept keys' values of this run

    def overrides(self) -> list[str]:
        return [f"{key}={_text(value)}" for key, value in self.values.items()]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def split_values(text: str) -> list[str]:
    """``0.2,0.5,[0.2, 1.0]`` -> ['0.2', '0.5', '[0.2, 1.0]']: commas inside brackets or braces belong to the value."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_grid(arguments: list[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """Swept keys with their values (in order) and the fixed overrides every run gets."""
    grid: dict[str, list[Any]] = {}
    fixed: list[str] = []
    for item in arguments:
        if "=" not in item:
            raise RecipeError(f"sweep argument {item!r}: expected KEY=V1,V2,... (or KEY=VALUE for every run)")
        key, text = item.split("=", 1)
        values = split_values(text)
        if len(values) == 1:
            fixed.append(item)
            continue
        if key in grid:
            raise RecipeError(f"sweep: {key} is swept twice; give all its values in one argument")
        if any(v == "" for v in values):
            raise RecipeError(f"sweep argument {item!r}: an empty value (two commas in a row?)")
        grid[key] = [yaml.safe_load(v) for v in values]
    if not grid:
        raise RecipeError("sweep: nothing to sweep; give at least one KEY=V1,V2 with two or more values")
    return grid, fixed


def _slug(values: dict[str, Any]) -> str:
    """A folder-safe name: ``crop_scale-0.2-1.0_color_jitter-0.5`` (lists joined by '-')."""
    parts = []
    for key, value in values.items():
        text = re.sub(r"[\[\]{}\s]", "", _text(value)).replace(",", "-").replace(":", "")
        parts.append(f"{key.split('.')[-1]}-{text}")
    return re.sub(r"[^A-Za-z0-9._-]+", "", "_".join(parts))[:120]


def plan(grid: dict[str, list[Any]], out: Path) -> list[SweepRun]:
    keys = list(grid)
    runs = []
    for index, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        values = dict(zip(keys, combo))
        name = f"{index:02d}_{_slug(values)}"
        runs.append(SweepRun(name, out / name, values))
    return runs


def _state(run: SweepRun) -> str:
    from mmssl.outputs import RunManifest
    from mmssl.train.checkpoints import list_checkpoints

    manifest = RunManifest.read(run.output_dir) if run.output_dir.is_dir() else None
    if manifest is not None and manifest.status == "finished" and (run.output_dir / "metrics.json").is_file():
        return "finished"
    if manifest is not None and list_checkpoints(run.output_dir):
        return "resume"
    return "fresh" if manifest is None else "restart"


def command(recipe: Path, run: SweepRun, fixed: list[str], launcher: list[str]) -> list[str]:
    extra = {"resume": ["train.resume_from=latest"], "restart": ["train.overwrite=true"]}.get(_state(run), [])
    head = launcher or [sys.executable]
    return [*head, "-m", "mmssl", "train", str(recipe), *run_overrides(run, fixed), *extra]


def run_overrides(run: SweepRun, fixed: list[str]) -> list[str]:
    """Every override of one run, in the order the run applies them."""
    return [*fixed, *run.overrides(), f"output_dir={run.output_dir}", "train.progress=false"]


# settings that may differ between a kept run and the sweep asking for it again
_RUN_ONLY = {("train", "resume_from"), ("train", "overwrite"), ("train", "progress")}


def _same_recipe(saved: dict[str, Any], planned: dict[str, Any]) -> list[str]:
    """The top-level sections in which a kept run's recipe differs from the one the sweep would run now."""
    differ = []
    for key in dict.fromkeys([*saved, *planned]):
        a, b = saved.get(key), planned.get(key)
        if key == "train" and isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if ("train", k) not in _RUN_ONLY}
            b = {k: v for k, v in b.items() if ("train", k) not in _RUN_ONLY}
        if a != b:
            differ.append(key)
    return differ


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def collect(runs: list[SweepRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        path = run.output_dir / "metrics.json"
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        rows.append({"run": run.name, **{k: _text(v) for k, v in run.values.items()},
                     "status": "finished" if metrics else "missing", "steps": metrics.get("steps"),
                     "train_seconds": metrics.get("train_seconds"), **_flat(metrics.get("eval") or {})})
    return rows


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / ".sweep.csv.tmp", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out / ".sweep.csv.tmp", out / "sweep.csv")
    (out / ".sweep.json.tmp").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    os.replace(out / ".sweep.json.tmp", out / "sweep.json")


def sweep(recipe: str | Path, arguments: list[str], out: str | Path | None = None, launcher: str | None = None,
          dry_run: bool = False, keep_going: bool = False) -> dict[str, Any]:
    """Run (or with `dry_run`, print) every run of the grid, then write the table and the report."""
    from mmssl.recipes import apply_overrides, parse_recipe, read_yaml

    from mmssl.recipes import recipe_to_dict

    recipe = Path(recipe)
    grid, fixed = parse_grid(arguments)
    if "output_dir" in grid or any(item.split("=", 1)[0] == "output_dir" for item in fixed):
        raise RecipeError("sweep: output_dir is the sweep's to choose (OUT/<run>); set the sweep's folder with --out")
    base = read_yaml(recipe)
    out = Path(out) if out else Path("runs") / f"sweep_{recipe.stem}"
    runs = plan(grid, out)
    for run in runs:  # every run's recipe is valid before the first one starts, and a kept run is the same run
        planned = recipe_to_dict(parse_recipe(apply_overrides(json.loads(json.dumps(base)), run_overrides(run, fixed))))
        if _state(run) == "finished" and (run.output_dir / "recipe.yaml").is_file():
            saved = yaml.safe_load((run.output_dir / "recipe.yaml").read_text(encoding="utf-8")) or {}
            differ = _same_recipe(saved, planned)
            if differ:
                raise RecipeError(f"sweep: {run.name} in {str(out)!r} was trained with a different recipe ({', '.join(differ)} "
                                  "differ); a sweep keeps finished runs, so give this one a new --out")
    prefix = shlex.split(launcher) if launcher else []
    commands = [command(recipe, run, fixed, prefix) for run in runs]
    if dry_run:
        return {"commands": [shlex.join(c) for c in commands]}
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for run, cmd in zip(runs, commands):
        if _state(run) == "finished":
            print(f"sweep: {run.name} is finished; kept", file=sys.stderr, flush=True)
            continue
        print(f"sweep: {run.name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, env={**os.environ}, stdout=sys.stderr)  # stdout is the sweep's own summary
        if done.returncode != 0:
            failed.append(run.name)
            if not keep_going:
                raise MmsslError(f"sweep run {run.name} failed (exit {done.returncode}); fix it and rerun the same "
                                 "sweep: finished runs are kept, this one resumes (--keep-going runs the rest first)")
    rows = collect(runs)
    write_table(rows, out)
    finished = [run for run in runs if (run.output_dir / "metrics.json").is_file()]
    page = None
    if finished:
        from mmssl.report.page import write_report

        page = write_report([r.output_dir for r in finished], out / "report",
                            sweep={r.output_dir.name: r.values for r in finished})
    return {"runs": len(runs), "finished": len(finished), "failed": failed, "table": str(out / "sweep.csv"),
            "report": str(page) if page else None}
