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
from mmssl.curate.screening import Outcome, Sample, Screen, outcomes, read_sample
from mmssl.data.shard_writer import ShardWriter, input_fingerprint
from mmssl.data.shards import SIZE_FILE
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
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("output_dir", "workers")}
    done = input_fingerprint(cfg.input, settings)
    done["models"] = _model_files(cfg)  # a scorer retrained into the same folder is other settings
    return json.loads(json.dumps(done, default=str))


def _model_files(cfg: CurateConfig) -> dict[str, list[float]]:
    """Size and modification time of every file of the embedding filters' local models."""
    files: dict[str, list[float]] = {}
    for spec in (cfg.filters.clip_score, cfg.filters.semantic_dedup):
        for name in (spec.model, spec.pretrained) if spec is not None else ():
            path = Path(name).expanduser() if name else None
            if path is None or not path.exists():
                continue
            for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                stat = f.stat()
                files[str(f)] = [stat.st_size, stat.st_mtime]
    return files


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


class _Dedup:
    """Exact and near deduplication in input order, in this process; only kept samples are remembered."""

    def __init__(self, screen: Screen):
        self.exact, self.near = screen.exact, screen.near

    def verdict(self, outcome: Outcome) -> tuple[str, str] | None:
        """(filter, reason) if `outcome`'s sample repeats a kept one; else None, and it is remembered."""
        if self.exact is not None:
            reason = self.exact.check(outcome.hashes)
            if reason:
                return "exact_dedup", reason
        if self.near is not None:
            reason = self.near.check(outcome.sketch)
            if reason:
                return "near_dedup", reason
        key = outcome.sample.key  # type: ignore[union-attr]
        if self.exact is not None:
            self.exact.add(key, outcome.hashes)
        if self.near is not None:
            self.near.add(key, outcome.sketch)
        return None


def _write_sample(writer: ShardWriter, sample: Sample, number: int, kind: str) -> None:
    """A kept sample as `mmssl prepare` writes one: a JSON line, or an image with ``.txt`` and ``.json`` members."""
    if kind == "text":
        writer.write(json.dumps({"text": sample.text, "key": sample.key}, ensure_ascii=False))
        return
    name = f"{number:09d}"
    meta: dict[str, Any] = {"key": sample.key}
    if sample.label is not None:
        meta["label"] = sample.label
    members = [(f"{name}.{sample.ext}", sample.image_data)]
    if sample.captions:
        meta["captions"] = sample.captions
        members.append((f"{name}.txt", sample.captions[0].encode("utf-8")))
    members.append((f"{name}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8")))
    writer.write(members)  # type: ignore[arg-type]


def curate(cfg: CurateConfig) -> dict[str, Any]:
    """Curate `cfg.input` into `cfg.output_dir`; returns the summary (read, kept, dropped per filter, shards).

    Per-sample filters and the hash / MinHash deduplicators decide as records stream by; with an embedding
    filter (CLIP score, semantic dedup) a first pass scores and embeds what they keep and a second pass over
    the input writes what all filters keep."""
    from mmssl.data.stream_sources import data_sources, raw_records

    data, kind = cfg.input, cfg.kind
    out_dir = Path(cfg.output_dir).expanduser()
    check_not_input(out_dir, "output_dir", {"input.path": data.path if data.source == "files" else None})
    fingerprint = _fingerprint(cfg)
    done = _already_done(out_dir, fingerprint)
    if done is not None:
        log.info("%s already holds this curated data (same input and config): nothing to do", out_dir)
        return {**done, "unchanged": True}
    try:  # before anything is written: a wrong input path leaves no folder behind
        sources = data_sources(dataclasses.replace(data, streaming=True), kind, world_span=cfg.shard_size)
    except DataError as exc:
        raise DataError(str(exc).replace("data.path", "input.path")) from None
    embedding = None
    if cfg.filters.clip_score is not None or cfg.filters.semantic_dedup is not None:
        from mmssl.curate.embedding_filters import EmbeddingFilters

        embedding = EmbeddingFilters(cfg, out_dir / WORK_FILE)  # loads the models before anything is written
    needs_images = embedding is not None and embedding.needs_images
    screen = Screen(cfg, decode=needs_images or cfg.filters.image is not None and kind != "text")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUNNING).write_text(json.dumps({"started": "mmssl curate"}), encoding="utf-8")
    writer = ShardWriter(out_dir, "curated", ".jsonl" if kind == "text" else ".tar", cfg.shard_size)
    tally, dedup = _Tally(cfg.report_examples), _Dedup(screen)
    passed = bytearray()  # with embedding filters: 1 where the first pass kept the row (the second writes)
    read = kept = 0
    for read, outcome in enumerate(outcomes(sources, screen, cfg.workers), 1):
        key = outcome.key if outcome.key is not None else f"#{read}"
        if outcome.sample is not None:
            outcome.sample.key = key  # before dedup remembers it for the duplicates that name it
        dropped = outcome.dropped or (dedup.verdict(outcome) if outcome.sample is not None else None)
        if embedding is not None:
            passed.append(not dropped)
        if dropped:
            tally.drop(dropped[0], key, dropped[1])
            continue
        sample = outcome.sample
        if embedding is None:
            _write_sample(writer, sample, kept, kind)  # type: ignore[arg-type]
            kept += 1
        else:
            if needs_images and sample.image is None:  # decoded in a worker process, not sent back
                from mmssl.data.images import open_image

                sample.image = open_image(sample.image_data)
            embedding.add(read, sample)
    histograms: dict[str, Any] = {}
    warnings: list[str] = []
    if embedding is not None:
        decisions, histograms = embedding.decide()
        warnings = embedding.warnings
        kept = _write_pass(raw_records(sources), screen, tally, writer, passed, decisions)
    writer.close()
    return _finish(out_dir, cfg, writer, tally, read, kept, screen.active + _embedding_names(cfg), fingerprint,
                   histograms, warnings)


def _embedding_names(cfg: CurateConfig) -> list[str]:
    return [name for name in ("clip_score", "semantic_dedup") if getattr(cfg.filters, name) is not None]


def _write_pass(records: Any, screen: Screen, tally: _Tally, writer: ShardWriter, passed: bytearray,
                decisions: dict[int, Any]) -> int:
    """The second pass: write the rows every filter kept; count the embedding filters' drops (with the key of
    the kept sample a duplicate points at, seen earlier in this pass)."""
    from mmssl.data.shard_writer import sample_label

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
            tally.drop(name, key, reason if other is None else f"near-duplicate of {keys[other]}, {reason}")
            continue
        sample = read_sample(record, key, screen.kind, screen.columns, decode=False, verify=False)
        if isinstance(sample, str):
            raise DataError(f"{key}: read in the first pass of mmssl curate but not in the second ({sample}); "
                            "curate a fixed input")
        if screen.kind != "text":
            sample.label = sample_label(record, screen.root, screen.columns)
        _write_sample(writer, sample, kept, screen.kind)
        kept += 1
    return kept


def _finish(out_dir: Path, cfg: CurateConfig, writer: ShardWriter, tally: _Tally, read: int, kept: int,
            active: list[str], fingerprint: dict[str, Any], histograms: dict[str, Any],
            warnings: list[str]) -> dict[str, Any]:
    """sizes.json and the report (last, atomically: it marks the folder as done), then drop the running marker."""
    dropped = {name: tally.counts[name] for name in FILTERS if name in tally.counts}
    if read != kept + sum(dropped.values()):  # every sample is kept or counted under one filter
        raise RuntimeError(f"mmssl curate lost count: read {read}, kept {kept}, dropped {dropped}")
    if not kept:
        log.warning("mmssl curate kept no sample of %d (dropped: %s)", read, dropped)
    (out_dir / SIZE_FILE).write_text(json.dumps(dict(sorted(writer.written.items())), indent=1), encoding="utf-8")
    summary = {"output": str(out_dir), "kind": cfg.kind, "read": read, "kept": kept, "dropped": dropped,
               "shards": len(writer.written), "filters": active, **({"warnings": warnings} if warnings else {})}
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
