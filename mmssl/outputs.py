"""Where mmssl may write: outputs never overlap inputs, and mmssl replaces or deletes only what it wrote.

* `check_location`: an output path must not be a file where a folder is needed, lie below a file, or sit on
  a read-only or unwritable place; each problem is one clear error naming the key.
* `check_not_input`: an output may not be an input, hold an input, or lie inside an input folder.
* `RunManifest`: a training output folder records every path the run wrote (``.mmssl-run.json``), so that
  ``train.overwrite`` clears exactly those and a folder mmssl did not write is never taken over.
* `replace_owned_output`: the rule for single-output tools (`mmssl mine`, `mmssl augment`): an existing
  output is replaced only with overwrite and only if it is recognisably their own earlier output.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

from mmssl.errors import MmsslError, RecipeError

MANIFEST = ".mmssl-run.json"
LOCK = ".mmssl-run.lock"  # held (flock) by the main process of the run using the folder
_PROBE = ".mmssl-write-test-"
_GLOB = set("*?[")


def resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _describe_os_error(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_location(path: str | Path, key: str, *, folder: bool) -> None:
    """`path` can be created or written as a folder (`folder`) or a file: not below a file, not a file where a
    folder is needed (or the reverse), and writable (probed with a temporary file, which also catches
    read-only file systems and a full disk)."""
    target = resolved(path)
    if target.exists():
        if folder and not target.is_dir():
            raise RecipeError(f"{key} {str(path)!r} is a file, not a folder; choose a folder path")
        if not folder and target.is_dir():
            raise RecipeError(f"{key} {str(path)!r} is a folder; give a file path (e.g. {str(path)}/out.jsonl)")
    probe_dir = target if (folder and target.is_dir()) else target.parent
    ancestor = probe_dir
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RecipeError(f"{key} {str(path)!r} lies below {str(ancestor)!r}, which is a file; choose another path")
    probe = ancestor / f"{_PROBE}{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"mmssl")
    except OSError as exc:
        raise MmsslError(f"{key} {str(path)!r} cannot be written: {str(ancestor)!r} is not writable "
                         f"({_describe_os_error(exc)}); choose another path") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def local_inputs(named: Mapping[str, str | None]) -> list[tuple[str, Path]]:
    """(key, path) of the inputs among `named` that exist locally: a glob stands for the files it matches now
    (Hub ids and missing paths are dropped)."""
    found = []
    for key, value in named.items():
        if not value:
            continue
        text = os.path.expanduser(str(value))
        if _GLOB & set(text):
            found += [(key, Path(match).resolve()) for match in glob.glob(text, recursive=True)]
        elif Path(text).exists():
            found.append((key, Path(text).resolve()))
    return found


def check_not_input(output: str | Path, key: str, inputs: Mapping[str, str | None]) -> None:
    """Refuse an output that is an input (or would match an input glob), contains one, or lies inside an
    input folder."""
    out = resolved(output)
    for name, value in inputs.items():
        text = os.path.expanduser(str(value or ""))
        if _GLOB & set(text) and fnmatch.fnmatchcase(str(out), os.path.abspath(text)):
            raise RecipeError(f"{key} {str(output)!r} matches the input {name} {value!r}; mmssl never writes over "
                              f"its own inputs: choose another {key}")
    for name, path in local_inputs(inputs):
        if out == path:
            why = "is also"
        elif out in path.parents:
            why = "contains"
        elif path.is_dir() and path in out.parents:
            why = "lies inside"
        else:
            continue
        raise RecipeError(f"{key} {str(output)!r} {why} the input {name} {str(path)!r}; mmssl never writes over "
                          f"its own inputs: choose another {key}")


# --------------------------------------------------------------------------------------------------------
# training output folders
# --------------------------------------------------------------------------------------------------------


@dataclass
class RunManifest:
    """What an `mmssl train` run wrote into its output folder: relative file paths, folders (ending in "/")
    that are wholly the run's own, and glob patterns of its scratch files. Saved atomically on each change."""

    directory: Path
    files: list[str] = field(default_factory=list)
    status: str = "running"  # running | finished | diverged
    detail: str = ""

    @classmethod
    def read(cls, directory: Path) -> "RunManifest | None":
        path = directory / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(directory, [str(f) for f in data["files"]], str(data.get("status", "running")),
                       str(data.get("detail", "")))
        except (OSError, ValueError, KeyError, TypeError):
            raise MmsslError(f"{str(directory / MANIFEST)!r} is unreadable; mmssl cannot tell which files in "
                             f"{str(directory)!r} it wrote. Choose another output_dir") from None

    def save(self) -> None:
        data = {"mmssl": "train", "files": self.files, "status": self.status, "detail": self.detail}
        tmp = self.directory / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, self.directory / MANIFEST)

    def add(self, paths: Iterable[str]) -> None:
        new = [p for p in paths if p not in self.files]
        if new:
            self.files += new
            self.save()

    def set_status(self, status: str, detail: str = "") -> None:
        self.status, self.detail = status, detail
        self.save()

    def owns(self, relative: str) -> bool:
        if relative in (MANIFEST, f"{MANIFEST}.tmp", LOCK):
            return True
        return any(relative == entry or (entry.endswith("/") and relative.startswith(entry))
                   or (_GLOB & set(entry) and fnmatch.fnmatchcase(relative, entry)) for entry in self.files)

    def clear(self) -> list[str]:
        """Delete what the run wrote (and nothing else), then the manifest; returns the removed paths."""
        root = self.directory.resolve()
        removed = []
        for path in sorted(self.directory.rglob("*"), key=lambda p: -len(p.parts)):
            relative = path.relative_to(self.directory).as_posix()
            if not path.exists() or path.is_symlink() or root not in path.resolve().parents:
                continue  # never follow links out of the folder, whatever the manifest says
            if relative == LOCK:
                continue  # held by the run replacing this one: unlinking it would let a third run in
            top_entry = relative + "/" in self.files
            if path.is_dir():
                if top_entry:
                    shutil.rmtree(path)
                    removed.append(relative + "/")
                elif not any(path.iterdir()) and any(e.startswith(relative + "/") for e in self.files):
                    path.rmdir()  # a folder that held only the run's files
            elif self.owns(relative):
                path.unlink()
                removed.append(relative)
        (self.directory / MANIFEST).unlink(missing_ok=True)
        return removed


def foreign_entries(directory: Path, manifest: RunManifest | None, most: int = 4) -> list[str]:
    """Up to `most` files (or links) in `directory` that its run manifest does not claim (any file, without
    one), besides mmssl's lock and write probes."""
    found = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue  # folders count through the files in them
        if relative == LOCK or relative.startswith(_PROBE):
            continue
        if manifest is None or not manifest.owns(relative):
            found.append(relative)
            if len(found) >= most:
                break
    return sorted(found)


def storage_failure(exc: BaseException, folder: Path) -> str | None:
    """Why a write into `folder` failed when the storage is to blame, else None. Serialisers report a full disk
    in their own words (safetensors' "I/O error", torch's "unexpected pos"), so unless `exc` is an OSError
    the folder is probed with a small write (before the partial output is removed, so the space is still used)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    probe = folder / f"{_PROBE}{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * (1 << 16))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as failed:
        return failed.strerror or str(failed)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def is_disk_full(reason: str) -> bool:
    return any(text in reason for text in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT)))


# --------------------------------------------------------------------------------------------------------
# single outputs of mmssl mine / mmssl augment
# --------------------------------------------------------------------------------------------------------


def recover_replaced(path: Path) -> None:
    """A run killed between moving an earlier folder output aside (`.NAME.mmssl-old`) and moving the new one in
    leaves no output at `path`: put the earlier one back before anything else looks at it."""
    old = path.with_name(f".{path.name}.mmssl-old")
    if not path.exists() and old.exists():
        os.replace(old, path)


@contextmanager
def folder_swapped_in(path: Path) -> Iterator[Path]:
    """A fresh folder beside `path` (`.NAME.mmssl-tmp`) to write a new folder output into. On success it replaces
    `path` (an earlier output is moved aside, the new one moved in, the earlier one removed); on an error it is
    removed and `path` is as it was. Check with `replace_owned_output` first: this replaces what is there."""
    recover_replaced(path)  # a run killed between the two moves: put the earlier output back first
    work, old = path.with_name(f".{path.name}.mmssl-tmp"), path.with_name(f".{path.name}.mmssl-old")
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (work, old):  # our own temporaries of an interrupted run (old only beside a live output)
        if leftover.exists():
            shutil.rmtree(leftover)
    work.mkdir()
    try:
        yield work
        if path.exists():
            os.replace(path, old)
        os.replace(work, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if work.exists():
            shutil.rmtree(work)


def replace_owned_output(path: Path, key: str, overwrite: bool, owned: bool, how_to_overwrite: str) -> None:
    """Check that `path` may be (re)written: absent, or an earlier output of the same tool (`owned`) with
    `overwrite`. Nothing is deleted here; writers replace the old output atomically at the end."""
    if not path.exists() and not path.is_symlink():
        return
    if not owned:
        raise RecipeError(f"{key} {str(path)!r} already exists and was not written by this mmssl command; "
                          "mmssl never replaces what it did not write: choose another path")
    if not overwrite:
        raise RecipeError(f"{key} {str(path)!r} already exists (an earlier output); replace it with "
                          f"{how_to_overwrite} or choose another path")


def atomic_write_json(path: Path, data: object) -> None:
    """Replace `path` with `data` as JSON in one step: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
