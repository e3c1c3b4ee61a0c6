"""Data sources: the built-in world, local files (txt, jsonl, csv, parquet) and Hub dataset ids.

Every source ends as a `datasets.Dataset` whose columns are renamed to the roles an objective asks for
(``text``; ``anchor``/``positive``/``negative``; ``image``/``captions``), plus an optional eval split.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from mmssl.data.world import Kind, world_columns
from mmssl.errors import DataError
from mmssl.recipes import DataConfig

_EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_METADATA = ("stats.json", "dataset_info.json", "state.json")  # written beside data by mmssl/datasets
_BUILDERS = {"txt": "text", "jsonl": "json", "csv": "csv", "parquet": "parquet"}


@dataclass
class Splits:
    train: datasets.Dataset
    eval: datasets.Dataset | None


def _files(path: str) -> list[str]:
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _EXTENSIONS
                       and not f.name.endswith(_METADATA))
    elif p.is_file():
        found = [str(p)]
    else:
        found = sorted(glob.glob(os.path.expanduser(path), recursive=True))
    if not found:
        raise DataError(
            f"data.path {path!r}: no such file or folder (or no .txt/.jsonl/.csv/.parquet files in it); "
            "check the path, or set data.source to 'world' for the built-in data"
        )
    return found


def _format(files: list[str], fmt: str) -> str:
    if fmt != "auto":
        return fmt
    kinds = {_EXTENSIONS.get(Path(f).suffix.lower()) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(
            f"data.path: cannot tell the format of {files[:3]}; set data.format to txt, jsonl, csv or parquet"
        )
    return kinds.pop()


def _check_utf8(files: list[str], fmt: str) -> None:
    if fmt == "parquet":
        return
    for name in files:
        with open(name, "rb") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(
                        f"{name}: line {number} is not valid UTF-8; re-encode the file "
                        f"(e.g. `iconv -f latin1 -t utf-8 {name} > fixed.txt`)"
                    ) from None


def _load_files(path: str, fmt: str) -> datasets.Dataset:
    if (Path(path).expanduser() / "state.json").is_file():  # a `datasets` save_to_disk folder
        return datasets.load_from_disk(str(Path(path).expanduser()))
    files = _files(path)
    fmt = _format(files, fmt)
    _check_utf8(files, fmt)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(f"data.path {path!r}: no examples found (the files are empty); add examples or fix data.path")
    try:
        ds = datasets.load_dataset(_BUILDERS[fmt], data_files=files, split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        raise DataError(f"data.path {path!r}: could not read it as {fmt}: {exc}") from None
    if fmt == "txt":
        ds = ds.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True)
    return ds


def _load_hub(path: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(path, split=split)
    except Exception as exc:
        raise DataError(
            f"data.path {path!r}: could not load this Hub dataset (split {split!r}): {exc}. "
            "Offline? Point data.path at local files with data.source=files."
        ) from None


def map_columns(ds: datasets.Dataset, roles: list[str], mapping: dict[str, str], where: str) -> datasets.Dataset:
    """Rename mapped columns to role names and keep only the roles; fail clearly on a missing column."""
    unknown = set(mapping) - set(roles)
    if unknown:
        raise DataError(f"data.columns: {sorted(unknown)} are not roles of this objective; its roles are {roles}")
    renames = {}
    for role in roles:
        column = mapping.get(role, role)
        if column not in ds.column_names:
            raise DataError(
                f"{where}: column {column!r} (role {role!r}) not found; the data has columns {ds.column_names}. "
                f"Map it with data.columns.{role}=<column name>"
            )
        if column != role:
            renames[column] = role
    ds = ds.rename_columns(renames) if renames else ds
    return ds.select_columns(roles)


def load_splits(cfg: DataConfig, kind: Kind, roles: list[str], seed: int = 0) -> Splits:
    """Load train (and eval) tables of `kind`, with columns renamed to `roles`."""
    if cfg.source == "world":
        train = datasets.Dataset.from_dict(world_columns(cfg.world, kind, "train"))
        evaluation = datasets.Dataset.from_dict(world_columns(cfg.world, kind, "eval"))
        where = "built-in world"
    else:
        train = _load_files(cfg.path, cfg.format) if cfg.source == "files" else _load_hub(cfg.path, cfg.split)
        where = f"data.path {cfg.path!r}"
        evaluation = None
        if cfg.eval_path:
            evaluation = _load_files(cfg.eval_path, cfg.format)
    if len(train) == 0:
        raise DataError(f"{where}: no examples found (empty data); add examples or fix data.path")
    if cfg.max_examples is not None:
        train = train.select(range(min(cfg.max_examples, len(train))))
    train = map_columns(train, roles, cfg.columns, where)
    if evaluation is not None:
        evaluation = map_columns(evaluation, roles, cfg.columns, f"data.eval_path {cfg.eval_path!r}")
    elif cfg.eval_fraction > 0 and len(train) >= 20:
        parts = train.train_test_split(test_size=cfg.eval_fraction, seed=seed, shuffle=True)
        train, evaluation = parts["train"], parts["test"]
    return Splits(train=train, eval=evaluation)
