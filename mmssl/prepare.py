"""`mmssl prepare`: turn an image folder, a table of image paths/bytes + captions, WebDataset shards, text files
or the built-in world into training shards: WebDataset tars for images (``KEY.jpg``/``.png``, ``KEY.txt``
with the first caption, ``KEY.json`` with every caption and the label) or JSON Lines for text, plus a
``sizes.json`` (samples per shard) so a streamed epoch is known before reading.

Input shards are converted in parallel worker processes (``workers``), each into shards of at most
``shard_size`` samples; images are checked (a corrupt one is skipped and counted) and optionally resized so
their shorter side is ``image_size``. Every file is written under a temporary name and renamed when complete,
``prepare.json`` last: a re-run with the same settings on the same input finds it and does nothing; a run
into a folder that mmssl did not write, or into (or over) its input, is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

from mmssl.config import DataConfig
from mmssl.data.shard_writer import ShardWriter, image_payload, input_fingerprint, sample_label
from mmssl.data.shards import SIZE_FILE, Problem
from mmssl.errors import DataError, RecipeError
from mmssl.outputs import check_not_input

log = logging.getLogger(__name__)

Kind = Literal["image_text", "images", "text"]
MANIFEST = "prepare.json"


@dataclasses.dataclass(frozen=True)
class Job:
    index: int
    shard: Any
    kind: str
    out: str
    shard_size: int
    image_size: int | None
    columns: tuple[tuple[str, str], ...]
    root: str | None  # an image folder: class subfolder names are labels


def _convert(job: Job) -> tuple[dict[str, int], dict[str, int]]:
    """One input shard -> output shards; returns (samples per output shard, skipped records by reason)."""
    from mmssl.data.images import BadImage
    from mmssl.data.records import record_captions, record_image

    reader = _JOB_READER
    columns = dict(job.columns)
    skipped: dict[str, int] = {}
    writer = ShardWriter(Path(job.out), f"shard-{job.index:05d}", ".jsonl" if job.kind == "text" else ".tar",
                          job.shard_size)
    number = 0
    for record in reader(job.shard):
        if isinstance(record, Problem):
            skipped[record.reason] = skipped.get(record.reason, 0) + 1
            continue
        if job.kind == "text":
            text = record.get(columns.get("text", "text"))
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            if not isinstance(text, str) or not text.strip():
                skipped["no text"] = skipped.get("no text", 0) + 1
                continue
            writer.write(json.dumps({"text": text}, ensure_ascii=False))
            continue
        captions = record_captions(record, columns)
        if job.kind == "image_text" and not captions:
            skipped["no caption"] = skipped.get("no caption", 0) + 1
            continue
        try:
            data, ext = image_payload(record_image(record, columns), job.image_size)
        except BadImage as exc:
            reason = str(exc).split(" (")[0]
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        key = f"{job.index:05d}{number:07d}"
        number += 1
        meta: dict[str, Any] = {"key": str(record.get("__key__", key))}
        label = sample_label(record, job.root, columns)
        if label is not None:
            meta["label"] = label
        members = [(f"{key}.{ext}", data)]
        if captions:
            meta["captions"] = captions
            members.append((f"{key}.txt", captions[0].encode("utf-8")))
        members.append((f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8")))
        writer.write(members)
    writer.close()
    return writer.written, skipped


_JOB_READER: Any = None


def _init_worker(reader: Any) -> None:
    global _JOB_READER
    _JOB_READER = reader


def prepare(data: DataConfig, out: str, kind: Kind, shard_size: int = 1000, image_size: int | None = None,
            workers: int = 1) -> dict[str, Any]:
    """Write `data` as shards into `out`; returns a summary (shards, samples, skipped records by reason)."""
    from mmssl.data.stream_sources import data_sources

    if data.source == "hub":
        raise RecipeError("mmssl prepare reads local data and the built-in world; stream a Hub dataset directly "
                          "with data.source=hub and data.streaming=true")
    out_dir = Path(out).expanduser()
    check_not_input(out_dir, "the output folder", {"the input": data.path if data.source == "files" else None})
    settings = {"data": dataclasses.asdict(data), "kind": kind, "shard_size": shard_size, "image_size": image_size}
    fingerprint = input_fingerprint(data, settings)
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        done = json.loads(manifest.read_text(encoding="utf-8"))
        if done.get("fingerprint") == fingerprint:
            log.info("%s already holds these shards (same input and settings): nothing to do", out_dir)
            return {**done["summary"], "unchanged": True}
        raise DataError(f"{str(out_dir)!r} holds shards prepared from other data or settings; prepare into a new "
                        "folder (mmssl never overwrites what it wrote for another input)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{str(out_dir)!r} is not empty and was not written by mmssl prepare; choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    world_kind = {"text": "text", "images": "images", "image_text": "image_text"}[kind]
    sources = data_sources(dataclasses.replace(data, streaming=True), world_kind, world_span=shard_size)
    root = data.path if data.source == "files" and Path(data.path or "").expanduser().is_dir() else None
    written: dict[str, int] = {}
    skipped: dict[str, int] = {}
    index = 0
    for source in sources:
        jobs = [Job(index + i, shard, kind, str(out_dir), shard_size, image_size, tuple(sorted(data.columns.items())),
                    str(Path(root).expanduser()) if root else None) for i, shard in enumerate(source.shards)]
        index += len(jobs)
        if workers > 1 and len(jobs) > 1 and data.source == "files":  # the world's rows live in this process
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(source.reader,)) as pool:
                results = list(pool.map(_convert, jobs))
        else:
            _init_worker(source.reader)
            results = [_convert(job) for job in jobs]
        for shards, problems in results:
            written.update(shards)
            for reason, n in problems.items():
                skipped[reason] = skipped.get(reason, 0) + n
    if not written:
        raise DataError(f"no usable samples in {data.path or 'the built-in world'!r} (skipped: {skipped or 'none'})")
    (out_dir / SIZE_FILE).write_text(json.dumps(dict(sorted(written.items())), indent=1), encoding="utf-8")
    summary = {"output": str(out_dir), "shards": len(written), "samples": sum(written.values()), "skipped": skipped}
    tmp = out_dir / f".tmp-{MANIFEST}"
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "summary": summary}, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, manifest)
    return summary
