"""Atomic checkpoints: written to a temporary folder, then renamed; a kill mid-save never leaves a
corrupt checkpoint behind, and `latest` only ever names a complete one."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmssl.errors import CheckpointError

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")
# Recipe sections that must match for a checkpoint to be resumed (training settings may change).
RESUME_KEYS = ("objective", "model", "tokenizer", "data", "seed")


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples: int = 0
    tokens: int = 0
    signature: dict[str, Any] | None = None


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


def write_state(directory: Path, state: TrainerState) -> None:
    """Write the trainer state last: its presence marks the checkpoint complete."""
    path = directory / STATE_FILE
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(asdict(state), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


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
        return found[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        hint = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        raise CheckpointError(
            f"train.resume_from={resume_from!r} is not a checkpoint folder (no {STATE_FILE}); "
            f"checkpoints in {str(checkpoint_root(output_dir))!r}: {hint}; or use train.resume_from=latest"
        )
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
