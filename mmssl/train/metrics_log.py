"""Metrics go to a JSONL log in the output folder and to any Accelerate tracker the recipe names."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b': value} with values trackers accept (numbers, strings, bools)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class MetricsLog:
    """Appends one JSON object per event; only the main process writes."""

    def __init__(self, path: Path, accelerator, enabled: bool):
        self.path = path
        self.accelerator = accelerator
        self.enabled = enabled
        self.started = time.perf_counter()

    def write(self, step: int, values: dict[str, Any], event: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            elapsed = round(time.perf_counter() - self.started, 4)
            handle.write(json.dumps({"event": event, "step": step, "elapsed_s": elapsed, **clean}) + "\n")
        numeric = {f"{event}/{k}": v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric and self.accelerator.trackers:
            self.accelerator.log(numeric, step=step)
