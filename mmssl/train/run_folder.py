"""The output folder of a training run: which runs may write into it, and what they may remove.

A run writes only into a new or empty folder, or into a folder of its own earlier run (recorded by
`mmssl.outputs.RunManifest`): to resume it (`train.resume_from`) or to replace it (`train.overwrite`, which
removes exactly the files that run wrote; anything else in the folder stays). A non-empty folder that is not
an mmssl run, or one that is (or holds, or lies inside) an input of the recipe, is refused.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path

from mmssl.errors import RecipeError
from mmssl.outputs import RunManifest, check_location, check_not_input, foreign_entries, resolved
from mmssl.recipes import Recipe
from mmssl.train.checkpoints import list_checkpoints

# What every run may write, besides its exported model files (added when they are written).
RUN_FILES = ["recipe.yaml", "log.jsonl", "checkpoints/", "tracking/", ".tmp-export/", ".tmp-push/",
             ".images-*.npy", ".mmssl-write-test-*"]


class Claim(Enum):
    FRESH = "fresh"        # new or empty folder
    RESUME = "resume"      # continue the run in this folder from one of its checkpoints
    REPLACE = "replace"    # overwrite: remove the earlier run's files first


def recipe_inputs(recipe: Recipe) -> dict[str, str | None]:
    """Local paths a recipe reads: model, tokenizer, data, and path-valued objective keys (e.g. eval_pairs)."""
    inputs: dict[str, str | None] = {
        "model.pretrained": recipe.model.pretrained, "model.arch": recipe.model.arch,
        "tokenizer.path": recipe.tokenizer.path, "data.path": recipe.data.path, "data.eval_path": recipe.data.eval_path,
    }
    for item in dataclasses.fields(recipe.objective):
        value = getattr(recipe.objective, item.name)
        if isinstance(value, str) and value and item.name != "name":
            inputs[f"objective.{item.name}"] = value
    return inputs


def claim_output_dir(recipe: Recipe, resume_dir: Path | None) -> tuple[Claim, RunManifest | None]:
    """Decide (read-only, on every process) whether this run may use ``recipe.output_dir``; raise a clear
    error when it may not."""
    cfg = recipe.train
    out = Path(recipe.output_dir)
    check_location(out, "output_dir", folder=True)
    check_not_input(out, "output_dir", recipe_inputs(recipe))
    manifest = RunManifest.read(out) if out.is_dir() else None
    foreign = foreign_entries(out, manifest) if out.is_dir() and manifest is None else []
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RecipeError(
            f"output_dir {str(out)!r} is not empty and is not an mmssl run (it holds {listed}); a run writes only "
            "into a new or empty folder or one of its own earlier runs: choose another output_dir")
    own_checkpoint = resume_dir is not None and resolved(resume_dir).parent == resolved(out / "checkpoints")
    if cfg.overwrite and own_checkpoint:
        raise RecipeError(f"train.overwrite=true would delete the checkpoint train.resume_from={cfg.resume_from!r} "
                          "resumes from; drop one of the two")
    if manifest is None:
        return Claim.FRESH, None
    if own_checkpoint:
        return Claim.RESUME, manifest
    if cfg.overwrite:
        return Claim.REPLACE, manifest
    if not list_checkpoints(out) and not (out / "metrics.json").exists():
        return Claim.REPLACE, manifest  # a run that stopped before saving anything (e.g. a bad setting): redo it
    if resume_dir is not None:
        raise RecipeError(
            f"train.resume_from={cfg.resume_from!r} is a checkpoint of another run, and output_dir {str(out)!r} "
            "already holds a run that resuming would replace; resume into a new output_dir, or replace that run "
            "with train.overwrite=true")
    raise RecipeError(
        f"output_dir {str(out)!r} already holds a run; resume it with train.resume_from=latest, replace it with "
        "train.overwrite=true, or choose another output_dir")


def open_manifest(recipe: Recipe, claim: Claim, manifest: RunManifest | None) -> RunManifest:
    """On the main process: clear a replaced run, create the folder, and record this run's files."""
    out = Path(recipe.output_dir)
    if claim is Claim.REPLACE and manifest is not None:
        manifest.clear()
        manifest = None
    out.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        manifest = RunManifest(out, list(RUN_FILES))
    else:
        manifest.files += [f for f in RUN_FILES if f not in manifest.files]
    manifest.set_status("running")
    return manifest
