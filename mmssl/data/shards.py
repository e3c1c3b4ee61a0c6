"""Shards: the files (or Hub dataset) a streamed source reads, and tolerant readers of one shard.

A source spec is what ``data.path`` says: a file, a folder, a glob, or a brace pattern as open_clip writes
them (``shards/train-{00000..00099}.tar``); several sources are joined with ``::`` (open_clip's syntax) and
weighted with ``data.weights``. A reader turns one shard into raw records (undecoded bytes, text), skipping a
malformed line or a truncated tar member and counting it, so one bad record never ends a run; an unreadable
shard is named in the log and counted. Decoding and tokenising happen later, in loader workers
(`mmssl.data.streaming`).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mmssl.errors import DataError

log = logging.getLogger(__name__)

TEXT_FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv",
                ".parquet": "parquet"}
SHARD_FORMATS = {**TEXT_FORMATS, ".tar": "webdataset"}
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")  # a WebDataset sample's image
SIZE_FILE = "sizes.json"  # written by `mmssl prepare`: samples per shard, so an epoch is known before reading
METADATA_FILES = {SIZE_FILE, "prepare.json", "curate_report.json", "curate_report.html", "stats.json",
                  "dataset_info.json", "state.json", "metadata.jsonl", "metadata.csv"}

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CHOICES = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar`` (zero padding kept), ``{a,b}`` -> both; the
    leftmost brace varies slowest, as in the ``braceexpand`` package that webdataset and open_clip use."""
    found = [m for m in (_BRACE.search(pattern), _CHOICES.search(pattern)) if m]
    if not found:
        return [pattern]
    match = min(found, key=lambda m: m.start())
    if match.re is _BRACE:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        choices = match.group(1).split(",")
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [out for choice in choices for out in expand_braces(head + choice + tail)]


def list_files(spec: str, key: str = "data.path") -> list[str]:
    """The shard files of one source spec (file, folder, glob or brace pattern), sorted; a clear error if none."""
    found: list[str] = []
    for pattern in expand_braces(os.path.expanduser(spec)):
        p = Path(pattern)
        if p.is_dir():  # its shards; metadata files beside them (sizes.json, prepare.json, ...) are not data
            inside = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SHARD_FORMATS
                            and f.name not in METADATA_FILES and not f.name.startswith("."))
            tars = [f for f in inside if f.endswith(".tar")]
            found.extend(tars or inside)
        elif p.is_file():
            found.append(str(p))
        elif any(ch in pattern for ch in "*?["):
            found.extend(sorted(f for f in glob.glob(pattern, recursive=True) if Path(f).is_file()))
        elif _BRACE.search(spec) is not None:
            raise DataError(f"{key} {spec!r}: shard {pattern!r} of the brace pattern does not exist; fix the range")
    if not found:
        raise DataError(f"{key} {spec!r}: no such file or folder, or no .tar/.txt/.jsonl/.csv/.parquet files in it; "
                        "check the path (brace patterns like shard-{00000..00099}.tar and globs work)")
    return found


def shard_format(files: list[str], fmt: str, key: str = "data.path") -> str:
    """The one format of `files` (``data.format``, or told by their extensions)."""
    if fmt not in ("auto", "imagefolder"):
        return fmt
    kinds = {SHARD_FORMATS.get(Path(f).suffix.lower()) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(f"{key}: cannot tell the format of {files[:3]}; set data.format to webdataset, txt, jsonl, "
                        "csv or parquet (one format per source)")
    return kinds.pop()


def read_sizes(files: list[str]) -> list[int] | None:
    """Samples per shard from a ``sizes.json`` beside the shards (written by `mmssl prepare`), if all are known."""
    sizes: dict[str, int] = {}
    for folder in {str(Path(f).parent) for f in files}:
        path = Path(folder) / SIZE_FILE
        if path.is_file():
            try:
                table = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                return None
            sizes.update({str(Path(folder) / name): int(n) for name, n in table.items()})
    if not all(f in sizes for f in files):
        return None
    return [sizes[f] for f in files]


# ---------------------------------------------------------------------------------------------------------
# readers: one shard -> raw records; problems are counted in `Tally`, never raised
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """A record or shard that was skipped, and why (the reason is a short key, counted)."""

    reason: str
    where: str


Record = dict[str, Any]
Reader = Callable[[str], Iterator[Record | Problem]]


def read_tar(path: str) -> Iterator[Record | Problem]:
    """WebDataset convention: consecutive members sharing a key (path up to the first dot of the basename)
    form one sample ``{"__key__": ..., "<ext>": bytes}``. A truncated or corrupt tar yields the samples read
    before the damage and one `Problem`."""
    name = Path(path).name
    current: Record = {}
    key = None
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, base = os.path.split(member.name)
                if "." not in base or base.startswith("."):
                    continue
                stem, ext = base.split(".", 1)
                sample_key = f"{directory}/{stem}" if directory else stem
                if sample_key != key:
                    if current:
                        yield current
                    current, key = {"__key__": f"{name}/{sample_key}"}, sample_key
                handle = tar.extractfile(member)
                current[ext.lower()] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Problem("corrupt shard", f"{path}: {exc}")
        current = {}  # its last sample may be cut short
    if current:
        yield current


def read_lines(path: str) -> Iterator[Record | Problem]:
    """A text file: one record ``{"text"}`` per non-blank line; an undecodable line is a `Problem`."""
    name = Path(path).name
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    yield Problem("not UTF-8", f"{path}: line {number}")
                    continue
                if text:
                    yield {"__key__": f"{name}/{number}", "text": text}
    except OSError as exc:
        yield Problem("unreadable shard", f"{path}: {exc}")


def read_jsonl(path: str) -> Iterator[Record | Problem]:
    """JSON Lines: one object per line; a line that is not a JSON object is a `Problem`."""
    name = Path(path).name
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    yield Problem("malformed line", f"{path}: line {number}")
                    continue
                if not isinstance(value, dict):
                    yield Problem("malformed line", f"{path}: line {number} is not a JSON object")
                    continue
                value.setdefault("__key__", f"{name}/{number}")
                yield value
    except OSError as exc:
        yield Problem("unreadable shard", f"{path}: {exc}")


def read_csv(path: str) -> Iterator[Record | Problem]:
    name = Path(path).name
    try:
        with open(path, encoding="utf-8", newline="", errors="replace") as handle:
            rows = csv.DictReader(handle, delimiter="\t" if path.lower().endswith(".tsv") else ",")
            for number, row in enumerate(rows, 2):
                if None in row:  # more fields than the header
                    yield Problem("malformed line", f"{path}: line {rows.line_num}")
                    continue
                row["__key__"] = f"{name}/{number}"
                yield row
    except (OSError, csv.Error) as exc:
        yield Problem("unreadable shard", f"{path}: {exc}")


def read_parquet(path: str) -> Iterator[Record | Problem]:
    """Parquet, one record batch at a time (memory bounded by the row group, not the file)."""
    import pyarrow.parquet as pq

    name = Path(path).name
    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                row.setdefault("__key__", f"{name}/{number}")
                number += 1
                yield row
    except (OSError, ValueError) as exc:
        yield Problem("unreadable shard", f"{path}: {exc}")


READERS: dict[str, Reader] = {"webdataset": read_tar, "txt": read_lines, "jsonl": read_jsonl, "csv": read_csv,
                              "parquet": read_parquet}


def read_image_files(paths: list[str]) -> Iterator[Record | Problem]:
    """One shard of an image folder: a list of image paths; the class subfolder is the label."""
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            yield Problem("unreadable image", f"{path}: {exc}")
            continue
        yield {"__key__": path, "image": data, "__path__": path}


def image_bytes(record: Record) -> Any:
    """The image of a raw record: the first image member of a WebDataset sample, or an ``image`` field."""
    for ext in IMAGE_MEMBERS:
        if ext in record:
            return record[ext]
    for name in ("image", "img", "image_bytes", "jpg"):
        if name in record:
            value = record[name]
            if isinstance(value, dict):
                return value.get("bytes") or value.get("path")
            return value
    return None


def record_label(record: Record) -> Any:
    """A record's class label: a ``label``/``class``/``class_name`` field, a WebDataset ``.cls`` member (an int
    when it reads as one) or the ``label`` of its ``.json`` member; None when it has none."""
    for name in ("label", "class", "class_name"):
        if name in record and not isinstance(record[name], bytes):
            return record[name]
    cls = text_member(record, ("cls",))
    if cls is not None:
        cls = cls.strip()
        return int(cls) if cls.lstrip("-").isdigit() else cls
    return json_member(record).get("label")


def json_member(record: Record) -> dict[str, Any]:
    raw = record.get("json")
    if not isinstance(raw, (bytes, str)):
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def text_member(record: Record, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = record.get(name)
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            return value
    return None
