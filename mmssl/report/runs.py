"""An output folder as the report reads it: its training log (``log.jsonl``), ``metrics.json`` and recipe."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmssl.errors import MmsslError

# eval keys that count things rather than measure them: not drawn as curves
COUNTS = ("num_pairs", "images", "knn_k", "num_train", "num_test", "relation_probes", "collapsed", "logit_scale",
          "partitions")


@dataclass
class Run:
    name: str
    directory: Path
    train: list[dict[str, Any]] = field(default_factory=list)  # "train" events of log.jsonl
    evals: list[dict[str, Any]] = field(default_factory=list)  # "eval" events
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json ({} while a run is unfinished)
    recipe: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)  # finetune.json of an `mmssl finetune` output

    def series(self, events: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
        points = [(e["step"], e[key]) for e in events if isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)]
        return [p[0] for p in points], [float(p[1]) for p in points]

    def eval_keys(self) -> list[str]:
        keys = dict.fromkeys(k for e in self.evals for k, v in e.items()
                             if k not in ("event", "step", "elapsed_s") and isinstance(v, (int, float))
                             and not isinstance(v, bool) and not any(k.endswith(c) for c in COUNTS))
        return list(keys)

    def diagnostics(self) -> dict[str, dict[str, Any]]:
        """The last evaluation's arrays, keyed by objective label ("" for a single-objective run)."""
        found = self.metrics.get("diagnostics") or {}
        if self.recipe.get("objectives"):
            return {label: value for label, value in found.items() if isinstance(value, dict)}
        return {"": found} if found else {}

    @property
    def objective(self) -> str:
        if self.finetune and not self.recipe:
            return "finetune"
        return str(self.metrics.get("objective") or (self.recipe.get("objective") or {}).get("name") or "?")


def load_run(directory: str | Path, name: str | None = None) -> Run:
    """Read an output folder; a clear error when it is not one, and nothing is written."""
    directory = Path(directory)
    log = directory / "log.jsonl"
    finetune = _finetune_results(directory)
    if finetune and not log.is_file():  # an `mmssl finetune` output: its label-efficiency curve alone
        return Run(name or directory.name, directory, finetune=finetune)
    if not directory.is_dir() or not log.is_file():
        raise MmsslError(f"{str(directory)!r} is not an mmssl output folder (no log.jsonl): pass the output_dir of a "
                         "run (`mmssl train` writes log.jsonl there as it trains) or of `mmssl finetune`")
    run = Run(name or directory.name, directory, finetune=finetune)
    lines = log.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            if number == len(lines):
                continue  # a line cut short by a kill: the rest of the log still reads
            raise MmsslError(f"{str(log)!r} line {number} is not JSON; the log is damaged") from None
        if event.get("event") == "train":
            run.train.append(event)
        elif event.get("event") == "eval":
            run.evals.append(event)
    if (directory / "metrics.json").is_file():
        run.metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    if (directory / "recipe.yaml").is_file():
        run.recipe = yaml.safe_load((directory / "recipe.yaml").read_text(encoding="utf-8")) or {}
    return run


def _finetune_results(directory: Path) -> dict[str, Any]:
    """``finetune.json`` written by `mmssl finetune` in `directory` ({} when there is none)."""
    path = directory / "finetune.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise MmsslError(f"{str(path)!r} is not JSON; the mmssl finetune output is damaged (run it again)") from None
    if not isinstance(data, dict) or data.get("mmssl") != "finetune" or not isinstance(data.get("results"), list):
        return {}
    return data
