"""Atomic checkpoints: written to a temporary folder, then renamed; a kill mid-save never leaves a
corrupt checkpoint behind, and `latest` only ever names a complete one.

A checkpoint holds only what the run wrote, listed in its ``trainer_state.json`` (JSON: steps, data position,
the learning-rate schedule); resuming refuses any other file, and every pickle accelerate reads is loaded
with ``weights_only=True``, so no code that came with a checkpoint is run. A checkpoint whose weights gave a
non-finite loss is marked unsafe, and ``latest`` skips it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmssl.errors import CheckpointError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")
# Recipe sections that must match for a checkpoint to be resumed (training settings may change).
RESUME_KEYS = ("objective", "objectives", "mixing", "model", "tokenizer", "data", "seed")


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples: int = 0
    tokens: int = 0
    signature: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None  # the learning-rate schedule's state_dict (plain numbers)
    files: list[str] | None = None  # every file of the checkpoint, as written by the run
    unsafe: str | None = None  # why resuming from these weights would diverge again


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def temporary_dir(output_dir: Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f".tmp-step-{step:08d}"


def final_dir(output_dir: Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step-{step:08d}"


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.name not in (STATE_FILE, f".{STATE_FILE}.tmp"))


def write_state(directory: Path, state: TrainerState) -> None:
    """Write the trainer state last, listing the checkpoint's files: its presence marks the checkpoint complete."""
    state.files = _files(directory)
    path = directory / STATE_FILE
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(asdict(state), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def check_files(directory: Path, state: TrainerState) -> None:
    """Refuse a checkpoint with files the run did not write (e.g. a planted pickle) or with files missing."""
    if state.files is None or state.scheduler is None:
        raise CheckpointError(f"checkpoint {str(directory)!r} was written by an older mmssl (its schedule is pickled, "
                              "which mmssl no longer loads); start a fresh run")
    found = _files(directory)
    unknown = sorted(set(found) - set(state.files))
    missing = sorted(set(state.files) - set(found))
    if unknown:
        raise CheckpointError(f"checkpoint {str(directory)!r} holds files the run did not write ({', '.join(unknown)}); "
                              "mmssl loads only its own checkpoint files: remove them or resume from another checkpoint")
    if missing:
        raise CheckpointError(f"checkpoint {str(directory)!r} is incomplete: {', '.join(missing)} missing")


def check_random_states(directory: Path) -> None:
    """accelerate reads the RNG states with weights_only=True but ignores any failure (the run would silently
    continue with other random numbers): read them first and refuse a file that is not plain numbers."""
    import pickle

    from accelerate.utils.other import load

    for path in sorted(directory.glob("random_states_*.pkl")):
        try:
            load(path, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"checkpoint file {str(path)!r} is not plain numbers ({detail}); mmssl never unpickles "
                                  "code from a checkpoint: resume from a checkpoint this run wrote") from None


def mark_unsafe(directory: Path, reason: str) -> None:
    """Record in a committed checkpoint that its weights lead to divergence (atomically)."""
    state = read_state(directory)
    state.unsafe = reason
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    os.replace(tmp, directory / STATE_FILE)


def last_safe(output_dir: Path) -> Path | None:
    return next((p for p in reversed(list_checkpoints(output_dir)) if not read_state(p).unsafe), None)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def commit(tmp: Path, final: Path) -> None:
    """Make a fully written temporary checkpoint visible under its final name, atomically."""
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(output_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and leftovers of interrupted saves."""
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def remove_after(output_dir: Path, step: int) -> None:
    """Resuming from an earlier checkpoint of the same run starts a new continuation: the checkpoints the
    old one saved after `step` are removed, so that `latest` and pruning only ever see this one."""
    for later in list_checkpoints(output_dir):
        if int(_NAME.match(later.name).group(1)) > step:
            log.info("removing %s: this run resumes from step %d and replaces what followed it", later, step)
            shutil.rmtree(later)


def remove_stale_temporaries(output_dir: Path) -> None:
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for path in root.glob(".tmp-step-*"):
            shutil.rmtree(path, ignore_errors=True)


def read_state(directory: Path) -> TrainerState:
    try:
        data = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        return TrainerState(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r} is incomplete or unreadable ({exc})") from None


def resolve_resume(resume_from: str | None, output_dir: Path) -> Path | None:
    """The checkpoint folder named by ``train.resume_from`` ('latest' or a path), or None."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"train.resume_from=latest: no checkpoint in {str(checkpoint_root(output_dir))!r}; "
                "train with train.save_every>0 first, or drop resume_from to start fresh"
            )
        safe = last_safe(output_dir)
        if safe is None:
            raise CheckpointError(f"train.resume_from=latest: every checkpoint in {str(checkpoint_root(output_dir))!r} "
                                  f"is marked unsafe ({read_state(found[-1]).unsafe}); start fresh with a lower "
                                  "train.learning_rate")
        return safe
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        hint = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        raise CheckpointError(
            f"train.resume_from={resume_from!r} is not a checkpoint folder (no {STATE_FILE}); "
            f"checkpoints in {str(checkpoint_root(output_dir))!r}: {hint}; or use train.resume_from=latest"
        )
    unsafe = read_state(path).unsafe
    if unsafe:  # named explicitly: the user's call (e.g. with a much lower learning rate), but say so
        log.warning("train.resume_from=%s is marked unsafe (%s); train.resume_from=latest picks the last safe "
                    "checkpoint", resume_from, unsafe)
    return path


def check_signature(saved: dict[str, Any] | None, current: dict[str, Any], directory: Path) -> None:
    """Refuse to resume a checkpoint made by a different recipe (objective, model, tokenizer, data, seed)."""
    if saved is None:
        return
    differ = [key for key in RESUME_KEYS if saved.get(key) != current.get(key)]
    if differ:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} was made with a different recipe: {', '.join(differ)} differ. "
            "Resume with the recipe that made it, or start fresh in another output_dir"
        )


STREAM_SHAPE_FILE = "stream.json"
STREAM_STATE_FILE = "stream_state_rank{rank}.pt"


def write_stream_state(directory: Path, loader_state: dict, rank: int, world_size: int, workers: int) -> None:
    """A process's stream position (its stateful loader's state: plain numbers, strings and tensors), and,
    from the main process, the shape it is valid for (processes, loader workers)."""
    import torch

    torch.save(loader_state, directory / STREAM_STATE_FILE.format(rank=rank))
    if rank == 0:
        (directory / STREAM_SHAPE_FILE).write_text(json.dumps({"world": world_size, "workers": workers}), encoding="utf-8")


def read_stream_state(directory: Path, rank: int, world_size: int, workers: int) -> dict:
    """This process's saved stream position; refused when the checkpoint has none or another shape."""
    import pickle

    import torch

    from mmssl.data.streaming import check_stream_shape

    shape_file = directory / STREAM_SHAPE_FILE
    if not shape_file.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no stream position (it was trained on data read "
                              "whole): resume it with data.streaming=false")
    check_stream_shape(json.loads(shape_file.read_text(encoding="utf-8")), world_size, workers, f"checkpoint {str(directory)!r}")
    try:  # weights_only: plain containers, numbers, strings and tensors; never code
        return torch.load(directory / STREAM_STATE_FILE.format(rank=rank), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: the stream position of process {rank} is unreadable "
                              f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
