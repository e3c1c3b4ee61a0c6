"""The first look at every record: read it (key, captions or text, image bytes, label), run the per-sample
filters (caption, image, text, language) and prepare what deduplication compares (hashes, a MinHash
signature). It depends on the record alone, so with ``workers`` > 0 it runs in worker processes, shard by
shard, and the results come back in input order; deduplication, which needs one view of everything kept,
stays in the main process."""

from __future__ import annotations

import dataclasses
import io
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmssl.curate.config import CurateConfig
from mmssl.curate.dedup import Exact, Near
from mmssl.curate.filters import Language, normalise, per_sample_verdict
from mmssl.data.shard_writer import image_payload, sample_label
from mmssl.data.shards import Problem
from mmssl.data.stream_sources import source_records

log = logging.getLogger(__name__)

PER_SAMPLE = ("caption", "image", "text", "language")  # in the order they are tried
APPLIES = {"caption": {"image_text"}, "image": {"image_text", "images"}, "text": {"text"},
           "language": {"image_text", "text"}, "exact_dedup": {"image_text", "images", "text"},
           "near_dedup": {"image_text", "text"}}


@dataclasses.dataclass
class Sample:
    """One readable input record: its key, captions (or its text), for images the encoded bytes, its label."""

    key: str
    captions: list[str]
    image_data: bytes | None = None
    ext: str = ""
    image: Any = None  # the decoded image, when a filter looks at it (not sent back by worker processes)
    label: Any = None

    @property
    def text(self) -> str | None:
        return self.captions[0] if self.captions else None


@dataclasses.dataclass
class Outcome:
    """A record after the per-sample filters: the sample they keep (with its dedup hashes and signature), or
    (filter, reason) when ``unusable`` or a per-sample filter drops it. `key` is None for a record without one
    (the caller numbers it)."""

    key: str | None
    sample: Sample | None = None
    dropped: tuple[str, str] | None = None
    hashes: tuple[bytes | None, bytes | None] = (None, None)
    sketch: Any = None


def read_sample(record: dict[str, Any], key: str, kind: str, columns: dict[str, str], decode: bool,
                verify: bool = True) -> Sample | str:
    """The sample a record holds, or why it is unusable (no text, no caption, an image that does not decode).
    `verify`: decode the image even when `decode` does not keep it (an image must decode to be kept)."""
    from PIL import Image

    from mmssl.data.images import BadImage, open_image
    from mmssl.data.records import record_captions, record_image, record_text

    if kind == "text":
        text = record_text(record, columns.get("text", "text"))
        return Sample(key, [text]) if text is not None and text.strip() else "no text"
    captions = record_captions(record, columns)
    if kind == "image_text" and not captions:
        return "no caption"
    try:
        source = record_image(record, columns)
        if isinstance(source, dict):
            source = source.get("bytes") or source.get("path")
        if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
            source = Path(source).read_bytes()
        if isinstance(source, (bytes, bytearray)):  # the original bytes, decoded once
            image = open_image(source) if decode or verify else None
            ext = (Image.open(io.BytesIO(source)).format or "JPEG").lower()  # the header only
            return Sample(key, captions, bytes(source), {"jpeg": "jpg"}.get(ext, ext), image if decode else None)
        data, ext = image_payload(source, None)  # an in-memory image (the world's, a Hub row's): stored as PNG
        return Sample(key, captions, data, ext, open_image(data) if decode else None)
    except BadImage as exc:
        return str(exc)


class Screen:
    """The per-sample filters of a config and the inputs of its deduplicators."""

    def __init__(self, cfg: CurateConfig, decode: bool):
        filters, kind = cfg.filters, cfg.kind
        self.cfg, self.kind, self.decode = filters, kind, decode
        self.active = [n for n in (*PER_SAMPLE, "exact_dedup", "near_dedup")
                       if getattr(filters, n) is not None and kind in APPLIES[n]]
        self.language = Language(filters.language) if "language" in self.active else None
        self.exact = Exact(filters.exact_dedup, kind) if "exact_dedup" in self.active else None
        self.near = Near(filters.near_dedup) if "near_dedup" in self.active else None
        self.columns = dict(cfg.input.columns)
        path = Path(cfg.input.path or "").expanduser()
        self.root = str(path) if cfg.input.source == "files" and path.is_dir() else None

    def outcome(self, record: Any) -> Outcome:
        if isinstance(record, Problem):
            return Outcome(record.where, dropped=("unusable", record.reason))
        key = record.get("__key__")
        key = None if key is None else str(key)
        sample = read_sample(record, key or "", self.kind, self.columns, self.decode)
        if isinstance(sample, str):
            return Outcome(key, dropped=("unusable", sample))
        dropped = per_sample_verdict(self.cfg, self.language, image=sample.image if self.kind != "text" else None,
                                     caption=sample.text if self.kind == "image_text" else None,
                                     text=sample.text if self.kind == "text" else None)
        if dropped:
            return Outcome(key, dropped=dropped)
        if self.kind != "text":
            sample.label = sample_label(record, self.root, self.columns)
        norm = normalise(sample.text) if sample.text is not None and self.kind != "images" else None
        hashes = self.exact.hashes(sample.image_data, norm) if self.exact is not None else (None, None)
        sketch = self.near.signature(norm or "") if self.near is not None else None
        return Outcome(key, sample, hashes=hashes, sketch=sketch)


def outcomes(sources: list[Any], screen: Screen, workers: int) -> Iterator[Outcome]:
    """`screen` applied to every record, in input order: here, or shard by shard in `workers` processes
    (at most two shards per worker in flight, so memory stays bounded whatever the data size)."""
    if workers and "fork" not in multiprocessing.get_all_start_methods():
        log.warning("workers: this platform cannot fork worker processes; curating in one process")
        workers = 0
    for index, source in enumerate(sources):
        if not workers or source.hub is not None or len(source.shards) < 2:
            yield from (screen.outcome(record) for record in source_records(source))
            continue
        yield from _parallel(index, sources, screen, workers)


_STATE: tuple[list[Any], Screen] | None = None  # set in the parent just before the workers fork


def _screen_shard(task: tuple[int, int]) -> list[Outcome]:
    sources, screen = _STATE  # type: ignore[misc]
    source = sources[task[0]]
    out = []
    for record in source.reader(source.shards[task[1]]):
        outcome = screen.outcome(record)
        if outcome.sample is not None:
            outcome.sample.image = None  # the parent decodes again if an embedding filter needs it
        out.append(outcome)
    return out


def _parallel(index: int, sources: list[Any], screen: Screen, workers: int) -> Iterator[Outcome]:
    global _STATE
    _STATE = (sources, screen)
    tasks = iter([(index, shard) for shard in range(len(sources[index].shards))])
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque[Any] = deque(pool.apply_async(_screen_shard, (t,)) for t in _take(tasks, 2 * workers))
        while pending:
            batch = pending.popleft().get()
            pending.extend(pool.apply_async(_screen_shard, (t,)) for t in _take(tasks, 1))
            yield from batch
    _STATE = None


def _take(tasks: Iterator[Any], count: int) -> list[Any]:
    return [t for _, t in zip(range(count), tasks)]
