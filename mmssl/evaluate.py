"""Evaluate a finished output folder with its objective's own evaluation (and, optionally, the bias tests)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mmssl.errors import MmsslError

log = logging.getLogger(__name__)


def evaluate_output(directory: str | Path, overrides: list[str] | None = None, bias: bool = False) -> dict[str, Any]:
    """Metrics of the model an mmssl run wrote to `directory` (a combined run: one entry per objective).

    `overrides` change the saved recipe (e.g. ``data.eval_path=held_out.txt``). With `bias`, the association tests
    run too and are recorded in the folder's metrics.json (which the model card reads); a folder that is not an
    mmssl run but a SentenceTransformer, transformers or open_clip model gets the association tests only.
    """
    from mmssl.outputs import RunManifest
    from mmssl.recipes import apply_overrides, parse_recipe, read_yaml
    from mmssl.registry import get_objective

    directory = Path(directory)
    if not (directory / "recipe.yaml").is_file() and bias:
        from mmssl.eval.bias_suite import bias_report, folder_kind

        return {"bias": bias_report(directory, folder_kind(directory))}
    if not (directory / "recipe.yaml").is_file():
        raise MmsslError(f"{str(directory)!r} is not an mmssl output folder (no recipe.yaml); pass the output_dir of a "
                         "run (or, with --bias, any SentenceTransformer, transformers or open_clip model folder)")
    manifest = RunManifest.read(directory)
    if not (directory / "metrics.json").is_file() or (manifest is not None and manifest.status == "diverged"):
        why = {"diverged": f"the run diverged ({manifest.detail})" if manifest else "",
               "running": "the run has not finished (it is running, or was stopped)"}.get(
            manifest.status if manifest else "running", "the run has not finished")
        raise MmsslError(f"{str(directory)!r} holds no finished model to evaluate: {why}. Finish it with "
                         "`mmssl train ... train.resume_from=latest`, or evaluate another output_dir")
    recipe = parse_recipe(apply_overrides(read_yaml(directory / "recipe.yaml"), overrides or []))
    if recipe.objectives:
        from mmssl.objectives.combined import sub_recipe

        return {entry.label: _evaluate(get_objective(entry.params.name)(sub_recipe(recipe, entry)),
                                       directory / entry.label, bias, recipe.seed)
                for entry in recipe.objectives}
    return _evaluate(get_objective(recipe.objective.name)(recipe), directory, bias, recipe.seed)


def _evaluate(objective, directory: Path, bias: bool, seed: int) -> dict[str, Any]:
    from mmssl.outputs import RunManifest, atomic_write_json

    metrics = objective.evaluate_export(directory)
    if not bias:
        return metrics
    from mmssl.eval.bias_suite import bias_report

    report = bias_report(directory, objective.output.kind, seed)
    run = RunManifest.read(directory) or RunManifest.read(directory.parent)  # a combined run's root holds it
    relative = "metrics.json" if run is not None and run.directory == directory else f"{directory.name}/metrics.json"
    if run is not None and run.owns(relative):
        saved = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
        atomic_write_json(directory / "metrics.json", {**saved, "bias": report})
    else:  # mmssl only rewrites files a run of its own wrote
        log.warning("%s was not written by an mmssl run: the bias results are printed, not saved",
                    directory / "metrics.json")
    return {**metrics, "bias": report}
