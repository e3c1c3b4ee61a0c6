"""`mmssl curate`: read image-text, image or text data (shards, tables, folders, the built-in world) with the
streaming readers, drop samples by heuristic filters, language and exact / near duplicates, and write the kept
ones as `mmssl prepare` writes shards (WebDataset tars or JSON Lines, ``sizes.json``), plus
``curate_report.json``: every dropped sample is counted under the first filter that dropped it, with examples.

Files are written under temporary names and renamed when complete, the report last; it holds the settings
fingerprint, so a re-run with the same config and input does nothing. The input is only read.
"""

from __future__ import annotations

import dataclasses
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
RUNNING = ".curate-running"  # written first, removed last: a folder holding it is an interrupted curate run
# the order filters are tried in; a sample is counted under the first that drops it
FILTERS = ("unusable", "caption", "image", "text", "language", "exact_dedup", "near_dedup")
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
    return path.is_file() and (path.name in (RUNNING, SIZE_FILE) or path.name.startswith((".tmp-", "curated-")))


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


def curate(cfg: CurateConfig) -> dict[str, Any]:
    """Curate `cfg.input` into `cfg.output_dir`; returns the summary (read, kept, dropped per filter, shards)."""
    from mmssl.data.images import BadImage, open_image
    from mmssl.data.stream_sources import data_sources, record_captions, record_image

    data, kind, filters = cfg.input, cfg.kind, cfg.filters
    out_dir = Path(cfg.output_dir).expanduser()
    check_not_input(out_dir, "output_dir", {"input.path": data.path if data.source == "files" else None})
    fingerprint = _fingerprint(cfg)
    done = _already_done(out_dir, fingerprint)
    if done is not None:
        log.info("%s already holds this curated data (same input and config): nothing to do", out_dir)
        return {**done, "unchanged": True}

    active = [name for name in FILTERS[1:] if getattr(filters, name) is not None and kind in _APPLIES[name]]
    language = Language(filters.language) if "language" in active else None
    exact = Exact(filters.exact_dedup, kind) if "exact_dedup" in active else None
    near = Near(filters.near_dedup) if "near_dedup" in active else None

    try:  # before anything is written: a wrong input path leaves no folder behind
        sources = data_sources(dataclasses.replace(data, streaming=True), kind, world_span=cfg.shard_size)
    except DataError as exc:
        raise DataError(str(exc).replace("data.path", "input.path")) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUNNING).write_text(json.dumps({"started": "mmssl curate"}), encoding="utf-8")
    writer = ShardWriter(out_dir, "curated", ".jsonl" if kind == "text" else ".tar", cfg.shard_size)
    tally = _Tally(cfg.report_examples)
    columns = dict(data.columns)
    root = data.path if data.source == "files" and Path(data.path or "").expanduser().is_dir() else None
    root = str(Path(root).expanduser()) if root else None
    read = kept = 0
    for source in sources:
        for shard in source.shards:
            for record in source.reader(shard):  # type: ignore[misc]
                read += 1
                if isinstance(record, Problem):
                    tally.drop("unusable", record.where, record.reason)
                    continue
                key = str(record.get("__key__", f"#{read}"))
                image_data: bytes | None = None
                ext = ""
                image = None
                if kind == "text":
                    text = record.get(columns.get("text", "text"))
                    if isinstance(text, bytes):
                        text = text.decode("utf-8", errors="replace")
                    if not isinstance(text, str) or not text.strip():
                        tally.drop("unusable", key, "no text")
                        continue
                    captions = [text]
                else:
                    captions = record_captions(record, columns)
                    if kind == "image_text" and not captions:
                        tally.drop("unusable", key, "no caption")
                        continue
                    try:
                        image_data, ext = image_payload(record_image(record, columns), None)
                        if "image" in active:
                            image = open_image(image_data)
                    except BadImage as exc:
                        tally.drop("unusable", key, str(exc))
                        continue
                text = captions[0] if captions else None
                norm = normalise(text) if text is not None and kind != "images" else None
                reason = sketch = None
                for name in active:
                    if name == "caption":
                        reason = check_caption(text or "", filters.caption)
                    elif name == "image":
                        reason = check_image(image, filters.image)
                    elif name == "text":
                        reason = check_text(text or "", filters.text)
                    elif name == "language" and language is not None:
                        reason = language.check(text or "")
                    elif name == "exact_dedup" and exact is not None:
                        reason = exact.check(image_data, norm)
                    elif name == "near_dedup" and near is not None:
                        reason, sketch = near.check(norm or "")
                    if reason:
                        tally.drop(name, key, reason)
                        break
                if reason:
                    continue
                if exact is not None:
                    exact.add(key, image_data, norm)
                if near is not None and sketch is not None:
                    near.add(key, sketch)
                if kind == "text":
                    writer.write(json.dumps({"text": text, "key": key}, ensure_ascii=False))
                else:
                    name = f"{kept:09d}"
                    meta: dict[str, Any] = {"key": key}
                    label = sample_label(record, root, columns)
                    if label is not None:
                        meta["label"] = label
                    members = [(f"{name}.{ext}", image_data)]
                    if captions:
                        meta["captions"] = captions
                        members.append((f"{name}.txt", captions[0].encode("utf-8")))
                    members.append((f"{name}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8")))
                    writer.write(members)  # type: ignore[arg-type]
                kept += 1
    writer.close()
    dropped = {name: tally.counts[name] for name in FILTERS if name in tally.counts}
    if read != kept + sum(dropped.values()):  # every sample is kept or counted under one filter
        raise RuntimeError(f"mmssl curate lost count: read {read}, kept {kept}, dropped {dropped}")
    if not kept:
        log.warning("mmssl curate kept no sample of %d (dropped: %s)", read, dropped)
    (out_dir / SIZE_FILE).write_text(json.dumps(dict(sorted(writer.written.items())), indent=1), encoding="utf-8")
    summary = {"output": str(out_dir), "kind": kind, "read": read, "kept": kept, "dropped": dropped,
               "shards": len(writer.written), "filters": active}
    report = {"summary": summary, "examples": {name: tally.shown[name] for name in dropped},
              "fingerprint": fingerprint}
    tmp = out_dir / f".tmp-{REPORT}"
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out_dir / REPORT)
    (out_dir / RUNNING).unlink()
    return summary
