"""`mmssl augment CONFIG.yaml key=value ...`: unlabeled sentences → positive pairs (anchor, positive).

Reads sentences (data.* as in training recipes, role ``text``), makes one view per configured view per
sentence (back-translation, lexical edits), drops failed/identical/duplicate (and, with an encoder,
too (dis)similar) views, and writes columns ``anchor, positive, view, source_index`` as jsonl, parquet or a
`datasets` save_to_disk folder, with statistics in ``<output>.stats.json`` beside a file or
``augment_stats.json`` inside a folder (kept/dropped per reason, per view;
empty and truncated inputs; translation cache hits and model calls). Contrastive recipes read the output
with ``data.source: files`` and ``objective.mode: supervised``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATS_FILE = "augment_stats.json"


def load_config(path: str | Path, overrides: list[str] | None = None):
    from mmssl.data.text_views.config import AugmentConfig
    from mmssl.recipes import apply_overrides, read_yaml
    from mmssl.schema import from_dict

    raw = apply_overrides(read_yaml(path), overrides or [])
    data = raw.get("data")
    if isinstance(data, dict) and "eval_fraction" not in data:
        raw["data"] = {**data, "eval_fraction": 0.0}  # augment every row, hold nothing out
    return from_dict(AugmentConfig, raw)


def _read_sentences(cfg) -> list[Any]:
    from mmssl.data.sources import load_splits

    data = dataclasses.replace(cfg.data, eval_fraction=0.0, eval_path=None)
    texts = load_splits(data, "text", ["text"], seed=cfg.seed).train["text"]
    return list(texts)


def _truncate(text: str, max_words: int) -> tuple[str, bool]:
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words), False
    return " ".join(words[:max_words]), True


def _read_stats(path: Path) -> dict | None:
    """The statistics in `path` if it is an `mmssl augment` statistics file, else None."""
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) and "views" in stats and "output" in stats else None


def _is_stats(path: Path, out: Path) -> bool:
    stats = _read_stats(path)
    return stats is not None and Path(str(stats["output"])).expanduser().resolve() == out.resolve()


def _written_by_augment(out: Path, fmt: str) -> bool:
    """An earlier `mmssl augment` output at `out`, recognised by the statistics it carries or has beside it."""
    if out.is_symlink():
        return False
    if fmt == "disk":
        names = {p.name for p in out.iterdir()} if out.is_dir() else set()
        return _is_stats(out / STATS_FILE, out) and all(
            n in (STATS_FILE, "state.json", "dataset_info.json") or (n.startswith("data-") and n.endswith(".arrow"))
            for n in names)
    if fmt == "parquet" and out.is_file():
        import pyarrow.parquet as pq

        try:
            return b"mmssl_augment_stats" in (pq.read_schema(out).metadata or {})
        except Exception:  # noqa: BLE001 - not a parquet file
            return False
    return out.is_file() and _is_stats(_stats_beside(out), out)


def _stats_beside(out: Path) -> Path:
    return out.with_name(out.name + ".stats.json")


def _target(cfg) -> tuple[Path, str, Path]:
    """Output path, format and statistics path, checked before any work: never an input, never a file or
    folder that `mmssl augment` did not write (and only with output.overwrite an earlier output of its own)."""
    from mmssl.errors import MmsslError
    from mmssl.outputs import check_location, check_not_input, recover_replaced, replace_owned_output

    out = Path(cfg.output.path).expanduser()
    fmt = cfg.output.resolved_format
    stats = out / STATS_FILE if fmt == "disk" else _stats_beside(out)
    inputs = {"data.path": cfg.data.path, "data.eval_path": cfg.data.eval_path, "quality.encoder": cfg.quality.encoder,
              "cache.path": cfg.cache.path}
    check_location(out, "output.path", folder=fmt == "disk")
    check_not_input(out, "output.path", inputs)
    check_not_input(stats, "output.path", inputs)
    recover_replaced(out)
    replace_owned_output(out, "output.path", cfg.output.overwrite, _written_by_augment(out, fmt),
                         "output.overwrite=true")
    if fmt != "disk" and stats.exists() and _read_stats(stats) is None:
        raise MmsslError(f"{str(stats)!r} exists and was not written by mmssl augment, which keeps the statistics "
                         "of output.path there; choose another output.path")
    return out, fmt, stats


def _write(rows: dict[str, list], out: Path, fmt: str, stats: dict) -> None:
    import datasets
    import pyarrow.parquet as pq

    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "anchor": datasets.Value("string"), "positive": datasets.Value("string"), "view": datasets.Value("string"),
        "source_index": datasets.Value("int64")}))
    ds.info.description = "mmssl augment: " + json.dumps(stats, sort_keys=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.mmssl-tmp")
    old = out.with_name(f".{out.name}.mmssl-old")
    for leftover in (tmp, old):  # our own temporaries of an interrupted run
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as handle:
            names = list(rows)
            for values in zip(*(rows[n] for n in names)):
                handle.write(json.dumps(dict(zip(names, values)), ensure_ascii=False) + "\n")
    elif fmt == "parquet":
        table = ds.data.table
        metadata = dict(table.schema.metadata or {})
        metadata[b"mmssl_augment_stats"] = json.dumps(stats, sort_keys=True).encode()
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
    else:
        ds.save_to_disk(str(tmp))
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    if out.is_dir():  # checked by _target: an earlier output of ours; a folder cannot be replaced in one rename
        os.replace(out, old)
    os.replace(tmp, out)
    if old.is_dir():
        shutil.rmtree(old)


def augment(cfg) -> dict:
    """Run an AugmentConfig; returns the statistics (also written beside or inside the output)."""
    from mmssl.data.text_views.quality import QualityFilter, count_reasons
    from mmssl.data.text_views.views import build_views, open_cache
    from mmssl.errors import DataError
    from mmssl.schema import to_dict

    started = time.perf_counter()
    out, fmt, stats_path = _target(cfg)
    raw_texts = _read_sentences(cfg)
    indices, texts = [], []
    empty = truncated = 0
    for i, text in enumerate(raw_texts):
        if not text.strip():  # load_splits gives strings only (a null reads as "")
            empty += 1
            continue
        text, cut = _truncate(text, cfg.max_words)
        truncated += cut
        indices.append(i)
        texts.append(text)
    if not texts:
        where = "built-in world" if cfg.data.source == "world" else f"data.path {cfg.data.path!r}"
        raise DataError(f"{where}: no sentences to augment: all {len(raw_texts)} rows are empty, null or whitespace")
    if empty:
        log.warning("skipped %d empty, null or whitespace-only sentences", empty)
    if truncated:
        log.warning("truncated %d sentences to max_words=%d words", truncated, cfg.max_words)

    from mmssl.data.text_views.cache import NoCache

    translating = any(v.type == "backtranslation" for v in cfg.views)
    cache = open_cache(cfg.cache) if translating else NoCache()
    q = cfg.quality
    quality = QualityFilter(q.drop_identical, q.encoder, q.min_similarity, q.max_similarity, q.batch_size, q.device)
    views = [view for vcfg in cfg.views for view in build_views(vcfg, cfg.seed, cache)]
    rows: dict[str, list] = {"anchor": [], "positive": [], "view": [], "source_index": []}
    per_view: dict[str, dict] = {}
    seen: set[tuple[str, str]] = set()
    for view in views:
        tick = time.perf_counter()
        made = view.apply(texts, indices)
        reasons, _ = quality.reasons(texts, made, seen)
        for text, positive, index, reason in zip(texts, made, indices, reasons):
            if reason is None:
                rows["anchor"].append(text)
                rows["positive"].append(positive)
                rows["view"].append(view.name)
                rows["source_index"].append(index)
        entry: dict[str, Any] = {**view.describe(), "made": len(made), "kept": reasons.count(None),
                                 "dropped": count_reasons(reasons), "seconds": round(time.perf_counter() - tick, 3)}
        for side in ("forward", "backward"):
            translator = getattr(view, side, None)
            if translator is not None:
                entry[f"{side}_model_calls"] = translator.calls
                entry[f"{side}_translated"] = translator.translated
                entry[f"{side}_truncated_tokens"] = translator.truncated
        per_view[view.name] = entry
        log.info("view %s: kept %d of %d", view.name, entry["kept"], len(made))
    dropped = {r: sum(v["dropped"][r] for v in per_view.values()) for r in next(iter(per_view.values()))["dropped"]}
    stats = {
        "name": cfg.name,
        "output": str(out),
        "format": fmt,
        "input_rows": len(raw_texts),
        "sentences": len(texts),
        "skipped_empty": empty,
        "truncated": truncated,
        "max_words": cfg.max_words,
        "pairs": len(rows["anchor"]),
        "kept": len(rows["anchor"]),
        "dropped": dropped,
        "views": per_view,
        "translation_model_calls": sum(v.get("forward_model_calls", 0) + v.get("backward_model_calls", 0)
                                       for v in per_view.values()),
        "cache": {"enabled": cfg.cache.enabled and translating, "path": getattr(cache, "path", None) and str(cache.path),
                  "hits": cache.hits, "misses": cache.misses},
        "seconds": round(time.perf_counter() - started, 3),
        "config": to_dict(cfg),
    }
    cache.close()
    if not rows["anchor"]:
        raise DataError(f"every view was dropped ({dropped}); loosen the quality filter or use other views")
    _write(rows, out, fmt, stats)
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    stats_path.write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return stats

