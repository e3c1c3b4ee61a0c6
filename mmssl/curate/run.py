"""`mmssl curate`: read image-text, image or text data (shards, tables, folders, the built-in world) with the
streaming readers, drop samples by heuristic filters, language and exact / near duplicates, and write the kept
ones as `mmssl prepare` writes shards (WebDataset tars or JSON Lines, ``sizes.json``), plus
``curate_report.json``: every dropped sample is counted under the first filter that dropped it, with examples.

Files are written under temporary names and renamed when complete, the report last; it holds the settings
fingerprint, so a re-run with the same config and input does nothing. The input is only read.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from mmssl.curate.config import CurateConfig
from mmssl.curate.dedup import Exact, Near
from mmssl.curate.filters import Language, check_caption, check_image, check_text, normalise
from mmssl.data.shard_writer import ShardWriter, image_payload, input_fingerprint, sample_label
from mmssl.data.shards import SIZE_FILE, Problem
from mmssl.errors import DataError
from mmssl.outputs import check_not_input
from mmssl.schema import to_dict

log = logging.getLogger(__name__)

REPORT = "curate_report.json"
REPORT_PAGE = "curate_report.html"  # the same, with histograms, for a browser
RUNNING = ".curate-running"  # written first, removed last: a folder holding it is an interrupted curate run
WORK_FILE = ".tmp-embeddings.f16"  # the semantic dedup embeddings between the two passes
# the order filters are tried in; a sample is counted under the first that drops it
FILTERS = ("unusable", "caption", "image", "text", "language", "exact_dedup", "near_dedup", "clip_score",
           "semantic_dedup")
_APPLIES = {"caption": {"image_text"}, "image": {"image_text", "images"}, "text": {"text"},
            "language": {"image_text", "text"}, "exact_dedup": {"image_text", "images", "text"},
            "near_dedup": {"image_text", "text"}}


class _Tally:
    def __init__(self, examples: int):
        self.examples = examples
        self.counts: dict[str, int] = {}
        self.shown: dict[str, list[dict[str, str]]] = {}

    def drop(self, name: str, key: str, reason: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        shown = self.shown.setdefault(name, [])
        if len(shown) < self.examples:
            shown.append({"key": key, "reason": reason})


def _fingerprint(cfg: CurateConfig) -> dict[str, Any]:
    settings = {k: v for k, v in to_dict(cfg).items() if k != "output_dir"}
    return json.loads(json.dumps(input_fingerprint(cfg.input, settings), default=str))


def _ours(path: Path) -> bool:
    """A file an interrupted curate run may have left: its marker, shards, sizes.json, temporary files."""
    ours = path.name in (RUNNING, SIZE_FILE, REPORT_PAGE) or path.name.startswith((".tmp-", "curated-"))
    return path.is_file() and ours


def _already_done(out_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    report = out_dir / REPORT
    if report.is_file():
        done = json.loads(report.read_text(encoding="utf-8"))
        if done.get("fingerprint") == fingerprint:
            return done["summary"]
        raise DataError(f"{str(out_dir)!r} holds data curated from other input or settings; curate into a new "
                        "output_dir (mmssl never overwrites what it wrote for another input)")
    if out_dir.exists() and any(out_dir.iterdir()):
        leftovers = list(out_dir.iterdir())
        if (out_dir / RUNNING).is_file() and all(_ours(p) for p in leftovers):
            log.warning("%s holds an interrupted mmssl curate run: starting it over", out_dir)
            for path in leftovers:
                path.unlink()
            return None
        raise DataError(f"output_dir {str(out_dir)!r} is not empty and was not written by mmssl curate; choose a "
                        "new folder")
    return None


@dataclasses.dataclass
class _Sample:
    """One readable input record: its key, captions (or its text), and for images the encoded bytes."""

    key: str
    captions: list[str]
    image_data: bytes | None = None
    ext: str = ""
    image: Any = None  # the decoded image, when the image filter looks at it

    @property
    def text(self) -> str | None:
        return self.captions[0] if self.captions else None


class _Filters:
    """The active filters, tried in `FILTERS` order; the deduplicators remember only kept samples."""

    def __init__(self, cfg: CurateConfig):
        filters, kind = cfg.filters, cfg.kind
        self.cfg, self.kind = filters, kind
        self.active = [name for name in FILTERS[1:7] if getattr(filters, name) is not None and kind in _APPLIES[name]]
        self.language = Language(filters.language) if "language" in self.active else None
        self.exact = Exact(filters.exact_dedup, kind) if "exact_dedup" in self.active else None
        self.near = Near(filters.near_dedup) if "near_dedup" in self.active else None

    def verdict(self, sample: _Sample) -> tuple[str, str] | None:
        """(filter, reason) of the first filter that drops `sample`; None keeps it (and remembers it)."""
        text = sample.text or ""
        norm = normalise(sample.text) if sample.text is not None and self.kind != "images" else None
        sketch = None
        for name in self.active:
            if name == "caption":
                reason = check_caption(text, self.cfg.caption)
            elif name == "image":
                reason = check_image(sample.image, self.cfg.image)
            elif name == "text":
                reason = check_text(text, self.cfg.text)
            elif name == "language":
                reason = self.language.check(text)  # type: ignore[union-attr]
            elif name == "exact_dedup":
                reason = self.exact.check(sample.image_data, norm)  # type: ignore[union-attr]
            else:  # near_dedup
                reason, sketch = self.near.check(norm or "")  # type: ignore[union-attr]
            if reason:
                return name, reason
        if self.exact is not None:
            self.exact.add(sample.key, sample.image_data, norm)
        if self.near is not None and sketch is not None:
            self.near.add(sample.key, sketch)
        return None


def _read_sample(record: dict[str, Any], number: int, kind: str, columns: dict[str, str],
                 decode: bool) -> _Sample | str:
    """The sample a record holds, or why it is unusable (no text, no caption, an image that does not decode)."""
    from PIL import Image

    from mmssl.data.images import BadImage, open_image
    from mmssl.data.records import record_captions, record_image

    key = str(record.get("__key__", f"#{number}"))
    if kind == "text":
        text = record.get(columns.get("text", "text"))
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return _Sample(key, [text]) if isinstance(text, str) and text.strip() else "no text"
    captions = record_captions(record, columns)
    if kind == "image_text" and not captions:
        return "no caption"
    try:
        source = record_image(record, columns)
        if isinstance(source, dict):
            source = source.get("bytes") or source.get("path")
        if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
            source = Path(source).read_bytes()
        if isinstance(source, (bytes, bytearray)):  # the original bytes, decoded once (it must decode to be kept)
            image = open_image(source)
            ext = (Image.open(io.BytesIO(source)).format or "JPEG").lower()  # the header only
            return _Sample(key, captions, bytes(source), {"jpeg": "jpg"}.get(ext, ext), image if decode else None)
        data, ext = image_payload(source, None)  # an in-memory image (the world's, a Hub row's): stored as PNG
        return _Sample(key, captions, data, ext, open_image(data) if decode else None)
    except BadImage as exc:
        return str(exc)


def _write_sample(writer: ShardWriter, sample: _Sample, number: int, label: Any, kind: str) -> None:
    """A kept sample as `mmssl prepare` writes one: a JSON line, or an image with ``.txt`` and ``.json`` members."""
    if kind == "text":
        writer.write(json.dumps({"text": sample.text, "key": sample.key}, ensure_ascii=False))
        return
    name = f"{number:09d}"
    meta: dict[str, Any] = {"key": sample.key}
    if label is not None:
        meta["label"] = label
    members = [(f"{name}.{sample.ext}", sample.image_data)]
    if sample.captions:
        meta["captions"] = sample.captions
        members.append((f"{name}.txt", sample.captions[0].encode("utf-8")))
    members.append((f"{name}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8")))
    writer.write(members)  # type: ignore[arg-type]


def _records(sources: list[Any]) -> Any:
    """Every raw record (or `Problem`) of the sources, in order: shard by shard, or a Hub dataset streamed."""
    for source in sources:
        if source.hub is None:
            for shard in source.shards:
                yield from source.reader(shard)
            continue
        import datasets

        path, split, name = source.hub
        for number, row in enumerate(datasets.load_dataset(path, name, split=split, streaming=True)):
            yield {"__key__": f"{path}/{split}/{number}", **row}


class _Pass:
    """What both passes need: the config, the filters, the report's tally, where labels come from."""

    def __init__(self, cfg: CurateConfig, filters: _Filters, tally: _Tally):
        self.cfg, self.filters, self.tally, self.kind = cfg, filters, tally, cfg.kind
        data = cfg.input
        self.columns = dict(data.columns)
        root = data.path if data.source == "files" and Path(data.path or "").expanduser().is_dir() else None
        self.root = str(Path(root).expanduser()) if root else None

    def screen(self, record: Any, row: int, decode: bool) -> _Sample | None:
        """The sample of `record` if the per-sample filters keep it; else None (counted)."""
        if isinstance(record, Problem):
            self.tally.drop("unusable", record.where, record.reason)
            return None
        sample = _read_sample(record, row, self.kind, self.columns, decode)
        if isinstance(sample, str):
            self.tally.drop("unusable", str(record.get("__key__", f"#{row}")), sample)
            return None
        dropped_by = self.filters.verdict(sample)
        if dropped_by:
            self.tally.drop(dropped_by[0], sample.key, dropped_by[1])
            return None
        return sample

    def label(self, record: Any) -> Any:
        return sample_label(record, self.root, self.columns) if self.kind != "text" else None


def curate(cfg: CurateConfig) -> dict[str, Any]:
    """Curate `cfg.input` into `cfg.output_dir`; returns the summary (read, kept, dropped per filter, shards).

    Per-sample filters and the hash / MinHash deduplicators decide as records stream by; with an embedding
    filter (CLIP score, semantic dedup) a first pass scores and embeds what they keep and a second pass over
    the input writes what all filters keep."""
    from mmssl.data.stream_sources import data_sources

    data, kind = cfg.input, cfg.kind
    out_dir = Path(cfg.output_dir).expanduser()
    check_not_input(out_dir, "output_dir", {"input.path": data.path if data.source == "files" else None})
    fingerprint = _fingerprint(cfg)
    done = _already_done(out_dir, fingerprint)
    if done is not None:
        log.info("%s already holds this curated data (same input and config): nothing to do", out_dir)
        return {**done, "unchanged": True}
    filters = _Filters(cfg)
    try:  # before anything is written: a wrong input path leaves no folder behind
        sources = data_sources(dataclasses.replace(data, streaming=True), kind, world_span=cfg.shard_size)
    except DataError as exc:
        raise DataError(str(exc).replace("data.path", "input.path")) from None
    embedding = None
    if cfg.filters.clip_score is not None or cfg.filters.semantic_dedup is not None:
        from mmssl.curate.embedding_filters import EmbeddingFilters

        embedding = EmbeddingFilters(cfg, out_dir / WORK_FILE)  # loads the models before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUNNING).write_text(json.dumps({"started": "mmssl curate"}), encoding="utf-8")
    writer = ShardWriter(out_dir, "curated", ".jsonl" if kind == "text" else ".tar", cfg.shard_size)
    tally = _Tally(cfg.report_examples)
    work = _Pass(cfg, filters, tally)
    decode = "image" in filters.active or (embedding is not None and embedding.needs_images)
    histograms: dict[str, Any] = {}
    read = kept = 0
    if embedding is None:
        for read, record in enumerate(_records(sources), 1):
            sample = work.screen(record, read, decode)
            if sample is not None:
                _write_sample(writer, sample, kept, work.label(record), kind)
                kept += 1
    else:
        passed = bytearray()  # 1 where the per-sample filters kept the row (the second pass skips the others)
        for read, record in enumerate(_records(sources), 1):
            sample = work.screen(record, read, decode)
            passed.append(sample is not None)
            if sample is not None:
                embedding.add(read, sample)
        decisions, histograms = embedding.decide()
        kept = _write_pass(_records(sources), work, writer, passed, decisions)
    writer.close()
    return _finish(out_dir, cfg, writer, tally, read, kept, filters.active + _embedding_names(cfg), fingerprint,
                   histograms)


def _embedding_names(cfg: CurateConfig) -> list[str]:
    return [name for name in ("clip_score", "semantic_dedup") if getattr(cfg.filters, name) is not None]


def _write_pass(records: Any, work: _Pass, writer: ShardWriter, passed: bytearray,
                decisions: dict[int, Any]) -> int:
    """The second pass: write the rows every filter kept; count the embedding filters' drops (with the key of
    the kept sample a duplicate points at, seen earlier in this pass)."""
    wanted = {other for _, _, other in decisions.values() if other is not None}
    keys: dict[int, str] = {}
    kept = 0
    for row, record in enumerate(records, 1):
        if row > len(passed):
            raise DataError("the input grew between the two passes of mmssl curate; curate a fixed input")
        if not passed[row - 1]:
            continue
        key = str(record.get("__key__", f"#{row}"))
        if row in wanted:
            keys[row] = key
        decision = decisions.get(row)
        if decision is not None:
            name, reason, other = decision
            work.tally.drop(name, key, reason if other is None else f"near-duplicate of {keys[other]}, {reason}")
            continue
        sample = _read_sample(record, row, work.kind, work.columns, decode=False)
        if isinstance(sample, str):
            raise DataError(f"{key}: read in the first pass of mmssl curate but not in the second ({sample}); "
                            "curate a fixed input")
        _write_sample(writer, sample, kept, work.label(record), work.kind)
        kept += 1
    return kept


def _finish(out_dir: Path, cfg: CurateConfig, writer: ShardWriter, tally: _Tally, read: int, kept: int,
            active: list[str], fingerprint: dict[str, Any], histograms: dict[str, Any]) -> dict[str, Any]:
    """sizes.json and the report (last, atomically: it marks the folder as done), then drop the running marker."""
    dropped = {name: tally.counts[name] for name in FILTERS if name in tally.counts}
    if read != kept + sum(dropped.values()):  # every sample is kept or counted under one filter
        raise RuntimeError(f"mmssl curate lost count: read {read}, kept {kept}, dropped {dropped}")
    if not kept:
        log.warning("mmssl curate kept no sample of %d (dropped: %s)", read, dropped)
    (out_dir / SIZE_FILE).write_text(json.dumps(dict(sorted(writer.written.items())), indent=1), encoding="utf-8")
    summary = {"output": str(out_dir), "kind": cfg.kind, "read": read, "kept": kept, "dropped": dropped,
               "shards": len(writer.written), "filters": active}
    report = {"summary": summary, "examples": {name: tally.shown[name] for name in dropped},
              "histograms": histograms, "fingerprint": fingerprint}
    from mmssl.curate.report_page import render

    page = out_dir / f".tmp-{REPORT_PAGE}"
    page.write_text(render(summary, report["examples"], histograms), encoding="utf-8")
    os.replace(page, out_dir / REPORT_PAGE)
    tmp = out_dir / f".tmp-{REPORT}"
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out_dir / REPORT)
    (out_dir / RUNNING).unlink()
    return summary
