"""Data sources: the built-in world, local files (txt, jsonl, csv, parquet) and Hub dataset ids.

Every source ends as a `datasets.Dataset` whose columns are renamed to the roles an objective asks for
(``text``; ``anchor``/``positive``/``negative``), plus an optional eval split. Every role is a text column:
one of another type is refused naming the column, and a null reads as an empty text (each command then
treats it as it treats blank text). Errors name the recipe key (``data.path``, ``data.eval_path``,
``corpus.path``), the file and, for malformed jsonl/csv, the line.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import datasets

from mmssl.data.world import Kind, world_columns
from mmssl.errors import DataError
from mmssl.config import DataConfig

_EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_METADATA = ("stats.json", "dataset_info.json", "state.json")  # written beside data by mmssl/datasets
_BUILDERS = {"txt": "text", "jsonl": "json", "csv": "csv", "parquet": "parquet"}
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false",
               type(None): "null"}

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: datasets.Dataset
    eval: datasets.Dataset | None


def _files(path: str, key: str = "data.path") -> list[str]:
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _EXTENSIONS
                       and not f.name.endswith(_METADATA))
    elif p.is_file():
        found = [str(p)]
    else:
        found = sorted(glob.glob(os.path.expanduser(path), recursive=True))
    if not found:
        section, field = key.rsplit(".", 1)
        world = f", or set {section}.source to 'world' for the built-in data" if field == "path" else ""
        raise DataError(
            f"{key} {path!r}: no such file or folder (or no .txt/.jsonl/.csv/.parquet files in it); "
            f"check the path{world}"
        )
    return found


def _format(files: list[str], fmt: str, key: str = "data.path") -> str:
    if fmt != "auto":
        return fmt
    kinds = {_EXTENSIONS.get(Path(f).suffix.lower()) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(
            f"{key}: cannot tell the format of {files[:3]}; "
            f"set {key.rsplit('.', 1)[0]}.format to txt, jsonl, csv or parquet"
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


def _malformed_line(name: str, fmt: str) -> str | None:
    """Where and why a jsonl or csv file is malformed (scanned after `datasets` failed on it), or None."""
    with open(name, encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            objects = 0
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    if not objects and line.strip() in ("[", "{"):
                        return None  # one JSON document over many lines, not JSON Lines
                    return f"line {number} is not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line"
                if not isinstance(value, dict):
                    found = _JSON_TYPES.get(type(value), type(value).__name__)
                    return (f"line {number} is {found}, not a JSON object; "
                            'each line must be one object like {"text": "..."}')
                objects += 1
        elif fmt == "csv":
            rows = csv.reader(handle)
            try:
                header = next(rows, [])
                for row in rows:
                    if len(row) > len(header):
                        return (f"line {rows.line_num} has {len(row)} fields but the header has {len(header)}; "
                                "quote fields that contain commas")
            except csv.Error as exc:
                return f"line {rows.line_num}: {exc}"
    return None


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence `datasets`' own error log while it reads files: a failure is reported once, as a DataError."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_files(path: str, fmt: str, key: str = "data.path") -> datasets.Dataset:
    """Read local files (or a save_to_disk folder); `key` is the recipe key that names them, for messages."""
    if (Path(path).expanduser() / "state.json").is_file():  # a `datasets` save_to_disk folder
        return datasets.load_from_disk(str(Path(path).expanduser()))
    files = _files(path, key)
    fmt = _format(files, fmt, key)
    _check_utf8(files, fmt)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(f"{key} {path!r}: no examples found (the files are empty); add examples or fix {key}")
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(_BUILDERS[fmt], data_files=files, split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        for name in files if fmt in ("jsonl", "csv") else []:
            why = _malformed_line(name, fmt)
            if why:
                inside = "" if os.path.abspath(name) == os.path.abspath(os.path.expanduser(path)) else f"{name}: "
                raise DataError(f"{key} {path!r}: {inside}{why}") from None
        raise DataError(f"{key} {path!r}: could not read it as {fmt}: {exc.__cause__ or exc}") from None
    if fmt == "txt":
        ds = ds.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True)
    return ds


def load_hub(path: str, split: str, key: str = "data.path") -> datasets.Dataset:
    try:
        return datasets.load_dataset(path, split=split)
    except Exception as exc:
        section = key.rsplit(".", 1)[0]
        raise DataError(
            f"{key} {path!r}: could not load this Hub dataset (split {split!r}): {exc}. "
            f"Offline? Point {key} at local files with {section}.source=files."
        ) from None


def _is_text(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _describe(ds: datasets.Dataset, column: str) -> str:
    """What a non-text column holds, in words."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Value):
        return "no values (null in every row)" if feature.dtype == "null" else f"{feature.dtype} values"
    if isinstance(feature, datasets.Json):  # jsonl whose values differ in type from row to row
        odd = ((i, v) for i, v in enumerate(ds[column]) if v is not None and not isinstance(v, str))
        row, value = next(odd, (0, None))
        return f"mixed JSON values (row {row} is {value!r}, {_JSON_TYPES.get(type(value), type(value).__name__)})"
    if isinstance(feature, (datasets.List, datasets.LargeList, list)):
        return "lists"
    if isinstance(feature, dict):
        return "records (JSON objects)"
    return f"{type(feature).__name__} values"


def _check_text(ds: datasets.Dataset, role: str, column: str, where: str, section: str) -> None:
    """Refuse a role column that does not hold strings, naming what it holds and the columns that do."""
    if _is_text(ds.features[column]):
        return
    texts = [c for c, f in ds.features.items() if _is_text(f) and c != column]
    fix = (f"map a text column with {section}.columns.{role}=<column name> (text columns: {texts})" if texts
           else f"no column holds text (columns: {ds.column_names}); write the {role} as strings")
    raise DataError(f"{where}: column {column!r} (role {role!r}) holds {_describe(ds, column)}, not text; {fix}")


def _nulls_as_empty(ds: datasets.Dataset, roles: list[str], where: str) -> datasets.Dataset:
    """Read nulls in text columns as empty texts (every command treats those as it treats blank text)."""
    arrow = ds.with_format("arrow")  # null counts from Arrow, no Python pass over the rows
    counts = {role: n for role in roles if (n := arrow[role].null_count)}
    if not counts:
        return ds
    log.warning("%s: %s (of %d rows); nulls count as empty texts", where,
                ", ".join(f"{n} null in {role!r}" for role, n in counts.items()), len(ds))
    return ds.map(lambda batch: {role: ["" if t is None else t for t in batch[role]] for role in counts}, batched=True)


def map_columns(ds: datasets.Dataset, roles: list[str], mapping: dict[str, str], where: str,
                section: str = "data") -> datasets.Dataset:
    """Rename mapped columns to role names and keep only the roles; fail clearly on a missing column or one
    that does not hold text (every role is a text column); nulls become empty texts."""
    unknown = set(mapping) - set(roles)
    if unknown:
        raise DataError(f"{section}.columns: {sorted(unknown)} are not roles of this objective; its roles are {roles}")
    renames = {}
    for role in roles:
        column = mapping.get(role, role)
        if column not in ds.column_names:
            raise DataError(
                f"{where}: column {column!r} (role {role!r}) not found; the data has columns {ds.column_names}. "
                f"Map it with {section}.columns.{role}=<column name>"
            )
        _check_text(ds, role, column, where, section)
        if column != role:
            renames[column] = role
    ds = ds.rename_columns(renames) if renames else ds
    return _nulls_as_empty(ds.select_columns(roles), roles, where)


def load_splits(cfg: DataConfig, kind: Kind, roles: list[str], seed: int = 0, section: str = "data") -> Splits:
    """Load train (and eval) tables of `kind`, with columns renamed to `roles` (all text). `section` is the
    recipe key of `cfg` ("data", or "corpus" for a mining corpus), for messages."""
    if cfg.source == "world":
        train = datasets.Dataset.from_dict(world_columns(cfg.world, kind, "train"))
        evaluation = datasets.Dataset.from_dict(world_columns(cfg.world, kind, "eval"))
        where = "built-in world"
    else:
        key = f"{section}.path"
        train = load_files(cfg.path, cfg.format, key) if cfg.source == "files" else load_hub(cfg.path, cfg.split, key)
        where = f"{key} {cfg.path!r}"
        evaluation = None
        if cfg.eval_path:
            evaluation = load_files(cfg.eval_path, cfg.format, f"{section}.eval_path")
    if len(train) == 0:
        raise DataError(f"{where}: no examples found (empty data); add examples or fix {section}.path")
    if cfg.max_examples is not None:
        train = train.select(range(min(cfg.max_examples, len(train))))
    train = map_columns(train, roles, cfg.columns, where, section)
    if evaluation is not None:
        evaluation = map_columns(evaluation, roles, cfg.columns, f"{section}.eval_path {cfg.eval_path!r}", section)
    elif cfg.eval_fraction > 0 and len(train) >= 20:
        parts = train.train_test_split(test_size=cfg.eval_fraction, seed=seed, shuffle=True)
        train, evaluation = parts["train"], parts["test"]
    return Splits(train=train, eval=evaluation)


def eval_splits(cfg: DataConfig, kind: Kind, roles: list[str], seed: int = 0) -> Splits:
    """For a recipe whose training data is streamed: ``data.eval_path`` read whole as the eval split (the
    train split is empty); no eval split without one (a stream is not split)."""
    empty = datasets.Dataset.from_dict({role: [] for role in roles})
    if cfg.source == "world":
        return Splits(empty, datasets.Dataset.from_dict(world_columns(cfg.world, kind, "eval")).select_columns(roles))
    if not cfg.eval_path:
        log.info("data.path is streamed and data.eval_path is not set: no evaluation during training")
        return Splits(empty, None)
    evaluation = load_files(cfg.eval_path, cfg.format if cfg.format in _BUILDERS else "auto", "data.eval_path")
    return Splits(empty, map_columns(evaluation, roles, cfg.columns, f"data.eval_path {cfg.eval_path!r}"))
