"""The output folder of a training run: which runs may write into it, and what they may remove.

A run writes only into a new or empty folder, or into a folder of its own earlier run (recorded by
`mmssl.outputs.RunManifest`): to resume it (`train.resume_from`) or to replace it (`train.overwrite`, which
removes exactly the files that run wrote; anything else in the folder stays). A non-empty folder that is not
an mmssl run, or one that is (or holds, or lies inside) an input of the recipe, is refused.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from enum import Enum
from pathlib import Path

from mmssl.errors import MmsslError, RecipeError
from mmssl.outputs import LOCK, RunManifest, check_location, check_not_input, foreign_entries, resolved
from mmssl.config import Recipe
from mmssl.train.checkpoints import list_checkpoints

# What every run may write, besides its exported model files (added when they are written). The folders are
# wholly the run's: train.overwrite removes them with everything in them.
RUN_FILES = ["recipe.yaml", "log.jsonl", "checkpoints/", "tracking/", ".tmp-export/", ".tmp-push/",
             ".images-*.npy", ".mmssl-write-test-*", LOCK]
_held_locks: dict[Path, int] = {}  # run folder -> open descriptor holding its lock, in this process


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
    for item in dataclasses.fields(recipe.objective):  # keys declared with field(metadata={"input": True})
        if item.metadata.get("input"):
            inputs[f"objective.{item.name}"] = getattr(recipe.objective, item.name)
    for entry in recipe.objectives or []:  # a combined recipe: each objective's own data and input keys
        where = f"objectives.{entry.label}"
        if entry.data is not None:
            inputs[f"{where}.data.path"], inputs[f"{where}.data.eval_path"] = entry.data.path, entry.data.eval_path
        for item in dataclasses.fields(entry.params):
            if item.metadata.get("input"):
                inputs[f"{where}.{item.name}"] = getattr(entry.params, item.name)
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
        listed = ", ".join(foreign[:3]) + (" and more" if len(foreign) > 3 else "")
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
    if resume_dir is not None and not cfg.overwrite:
        raise RecipeError(
            f"train.resume_from={cfg.resume_from!r} is a checkpoint of another run, and output_dir {str(out)!r} "
            "already holds a run that resuming would replace; resume into a new output_dir, or replace that run "
            "with train.overwrite=true")
    nothing_saved = not list_checkpoints(out) and not (out / "metrics.json").exists()
    if not (cfg.overwrite or nothing_saved):
        raise RecipeError(
            f"output_dir {str(out)!r} already holds a run; resume it with train.resume_from=latest, replace it with "
            "train.overwrite=true, or choose another output_dir")
    linked = [e for e in manifest.files if e.endswith("/") and (out / e.rstrip("/")).is_symlink()]
    if linked:
        raise RecipeError(f"output_dir {str(out)!r}: {linked[0].rstrip('/')} is a link to another place, where the "
                          "earlier run's files would survive a replace; remove them there and the link, or choose "
                          "another output_dir")
    return Claim.REPLACE, manifest  # with overwrite, or a run that stopped before saving anything: redo it


def lock_run_folder(out: Path) -> None:
    """Hold an exclusive lock on the run folder until `release_run_folder` (or this process ends; main process
    only): a second run started on the same folder is refused instead of clearing or interleaving with it.

    The lock is an flock on ``.mmssl-run.lock``, which the holder deletes when it lets go (so a finished run
    leaves no lock file behind). A run that opened the file just before the holder deleted it may then lock
    a file that is no longer at the path; it checks that the file it locked is the one at the path (same
    device and inode) and otherwise starts over, so two runs never both believe they hold the folder."""
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise MmsslError(f"output_dir {str(out)!r} is in use by another mmssl run; wait for it to end, or "
                             "choose another output_dir") from None
        try:
            at_path = os.stat(path)
        except FileNotFoundError:
            at_path = None
        locked = os.fstat(fd)
        if at_path is not None and (at_path.st_dev, at_path.st_ino) == (locked.st_dev, locked.st_ino):
            break
        os.close(fd)  # the run that held it deleted the file after we opened it: lock the one at the path now
    _held_locks[out.resolve()] = fd


def _drop_locks_in_child() -> None:
    """A forked child (a loader worker) closes its copies of the lock descriptors: a flock lives while any copy
    is open, so a worker outliving a killed run would keep its folder locked against the resume."""
    for fd in _held_locks.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


def release_run_folder(out: Path) -> None:
    """Let go of the folder: delete the lock file while still holding its lock (a run waiting on it then sees
    that its file is gone and locks a new one; see `lock_run_folder`), then close it, which releases the lock."""
    fd = _held_locks.pop(out.resolve(), None)
    if fd is None:
        return
    try:
        at_path = os.stat(out / LOCK)
        locked = os.fstat(fd)
        if (at_path.st_dev, at_path.st_ino) == (locked.st_dev, locked.st_ino):  # ours, not one made since
            os.unlink(out / LOCK)
    except OSError:
        pass  # the folder or the file is gone already, or read-only: nothing to clean up
    finally:
        os.close(fd)


def open_manifest(recipe: Recipe, claim: Claim, manifest: RunManifest | None) -> RunManifest:
    """On the main process: lock the folder, clear a replaced run, and record this run's files."""
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock_run_folder(out)
    if claim is Claim.REPLACE and manifest is not None:
        manifest.clear()
        manifest = None
    if manifest is None:
        manifest = RunManifest(out, list(RUN_FILES))
    else:
        manifest.files += [f for f in RUN_FILES if f not in manifest.files]
    manifest.set_status("running")
    return manifest
