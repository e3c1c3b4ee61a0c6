"""`mmssl mine`: (query, positive) pairs -> (query, positive, negative_1..k) with scores, ranks and guard counts."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from mmssl.data.sources import load_splits
from mmssl.errors import DataError, MmsslError
from mmssl.mining.bm25 import BM25Index
from mmssl.mining.config import MiningConfig, dump
from mmssl.mining.corpus import Corpus
from mmssl.mining.dense import DenseEncoder, top_k
from mmssl.outputs import check_location, check_not_input, recover_replaced, replace_owned_output

_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Text identity for duplicate checks: NFKC, case-folded, punctuation dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


@dataclass
class MiningResult:
    dataset: datasets.Dataset
    stats: dict[str, Any] = field(default_factory=dict)


def _load_pairs(cfg: MiningConfig) -> tuple[list[str], list[str], Counter]:
    data = dataclasses.replace(cfg.data, eval_fraction=0.0, eval_path=None)  # mining reads every pair
    table = load_splits(data, "pairs", ["anchor", "positive"], seed=cfg.seed).train
    counts: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    queries, positives = [], []
    for query, positive in zip(table["anchor"], table["positive"]):
        if not (query or "").strip() or not (positive or "").strip():
            counts["skipped_empty_query_or_positive"] += 1
            continue
        if (query, positive) in seen:
            counts["skipped_duplicate_pairs"] += 1
            continue
        seen.add((query, positive))
        queries.append(query)
        positives.append(positive)
    if not queries:
        raise DataError("mining: no (anchor, positive) pairs with both sides non-empty; check data.path and data.columns")
    return queries, positives, counts


def _fuse(lists: list[tuple[np.ndarray, np.ndarray]], cfg: MiningConfig) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion (Cormack et al. 2009) or weighted fusion of min-max normalised scores."""
    fused_ids, fused_scores = [], []
    weights = [1.0 - cfg.hybrid.dense_weight, cfg.hybrid.dense_weight]
    for row in range(len(lists[0][0])):
        total: dict[int, float] = defaultdict(float)
        for (ids, scores), weight in zip(lists, weights):
            r_ids, r_scores = ids[row], scores[row]
            if cfg.hybrid.fusion == "rrf":
                for rank, doc in enumerate(r_ids):
                    total[int(doc)] += 1.0 / (cfg.hybrid.rrf_k + rank + 1)
            else:
                lo, hi = float(r_scores.min()), float(r_scores.max())
                for doc, score in zip(r_ids, r_scores):
                    total[int(doc)] += weight * ((score - lo) / (hi - lo) if hi > lo else 1.0)
        ranked = sorted(total.items(), key=lambda kv: -kv[1])
        fused_ids.append([d for d, _ in ranked])
        fused_scores.append([s for _, s in ranked])
    width = max(len(r) for r in fused_ids)
    pad = lambda rows, v: np.array([r + [v] * (width - len(r)) for r in rows])  # noqa: E731
    return pad(fused_ids, -1), pad(fused_scores, float("-inf"))


def _stats_path(out: Path) -> Path:
    return out.with_name(out.name + ".stats.json")


def _is_mine_stats(path: Path) -> bool:
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and "rows_written" in stats and "config" in stats


def _written_by_mine(out: Path) -> bool:
    """An earlier `mmssl mine` output: its stats file is beside it, and a folder holds only `datasets` files."""
    if not _is_mine_stats(_stats_path(out)):
        return False
    if out.is_dir() and not out.is_symlink():
        names = {p.name for p in out.iterdir()}
        return {"state.json", "dataset_info.json"} <= names and all(
            n in ("state.json", "dataset_info.json") or (n.startswith("data-") and n.endswith(".arrow")) for n in names)
    return out.is_file() and not out.is_symlink()


def check_output(cfg: MiningConfig) -> None:
    """Before any work: the output (and the BM25 index folder) may be written without touching anything mmssl
    did not write or reads as input."""
    out = Path(cfg.output).expanduser()
    inputs = {"data.path": cfg.data.path, "data.eval_path": cfg.data.eval_path,
              "corpus.path": cfg.corpus.path if cfg.corpus else None, "dense.model": cfg.dense.model,
              "bm25.index_dir": cfg.bm25.index_dir}
    check_location(out, "output", folder=out.suffix == "")
    check_not_input(out, "output", inputs)
    check_not_input(_stats_path(out), "output", inputs)
    recover_replaced(out)
    replace_owned_output(out, "output", cfg.overwrite, _written_by_mine(out), "overwrite=true")
    if _stats_path(out).exists() and not _is_mine_stats(_stats_path(out)):
        raise MmsslError(f"{str(_stats_path(out))!r} exists and was not written by mmssl mine, which keeps the "
                         "statistics of output there; choose another output")
    if cfg.bm25.index_dir:
        index = Path(cfg.bm25.index_dir).expanduser()
        check_location(index, "bm25.index_dir", folder=True)
        check_not_input(index, "bm25.index_dir", {k: v for k, v in inputs.items() if k != "bm25.index_dir"})
        if index.is_dir() and any(index.iterdir()) and not (index / "params.index.json").is_file():
            raise MmsslError(f"bm25.index_dir {str(index)!r} is not empty and holds no BM25 index; mmssl saves the "
                             "index only into a new or empty folder: choose another bm25.index_dir")


def mine(cfg: MiningConfig) -> MiningResult:
    started = time.perf_counter()
    check_output(cfg)
    queries, positives, counts = _load_pairs(cfg)
    corpus = Corpus.load(cfg.corpus, positives, cfg.seed)  # streamed: texts stay in their Arrow table
    positive_ids = corpus.ids_of(positives)
    others = len(corpus) - 1
    if others < cfg.num_negatives:
        raise DataError(f"mining: {cfg.num_negatives} negatives asked but the corpus has only {others} other documents; "
                        "lower num_negatives or add a corpus")
    # all positives of a query text are relevant to it: never negatives for any pair with that query
    relevant: dict[str, set[int]] = defaultdict(set)
    for q, p in zip(queries, positive_ids):
        relevant[q].add(int(p))
    need = cfg.skip_top + cfg.window + max(len(v) for v in relevant.values()) + 1

    timings: dict[str, float] = {}
    bm25 = encoder = None
    bm25_pos = dense_pos = None
    if cfg.method in ("bm25", "hybrid") or cfg.guards.bm25_max_relative_score is not None:
        t = time.perf_counter()
        bm25 = BM25Index(cfg.bm25)
        bm25.build(corpus.iter_texts(), num_docs=len(corpus))
        timings["bm25_index_s"] = time.perf_counter() - t
        bm25_pos = bm25.score_pairs(queries, positive_ids)
    q_emb = c_emb = None
    if cfg.dense.model:
        t = time.perf_counter()
        encoder = DenseEncoder(cfg.dense)
        q_emb, c_emb = encoder.encode(queries), encoder.encode_stream(corpus.iter_texts(), len(corpus))
        timings["encode_s"] = time.perf_counter() - t
        dense_pos = np.einsum("ij,ij->i", q_emb, c_emb[positive_ids])

    t = time.perf_counter()
    if cfg.method == "bm25":
        ids, scores = bm25.search(queries, need)
        primary_pos = bm25_pos
    elif cfg.method == "dense":
        ids, scores = top_k(q_emb, c_emb, need, use_faiss=cfg.dense.use_faiss)
        primary_pos = dense_pos
    else:
        ids, scores = _fuse([bm25.search(queries, need), top_k(q_emb, c_emb, need, use_faiss=cfg.dense.use_faiss)], cfg)
        primary_pos = dense_pos
    timings["search_s"] = time.perf_counter() - t

    g = cfg.guards
    rng = random.Random(cfg.seed)
    # only the documents that can appear in the output are read back (and normalised), not the corpus
    needed = np.unique(np.concatenate([ids[ids >= 0].ravel(), positive_ids]))
    text_of = dict(zip(needed.tolist(), corpus.texts(needed)))
    norm_corpus = {d: normalise(t) for d, t in text_of.items()} if g.exclude_duplicates else None
    rows: dict[str, list] = defaultdict(list)
    kept_rows = 0
    for i, (query, positive) in enumerate(zip(queries, positives)):
        banned = relevant[query]
        banned_text = {normalise(query)} | {norm_corpus[d] for d in banned} if g.exclude_duplicates else set()
        candidates = []
        for rank, (doc, score) in enumerate(zip(ids[i], scores[i]), start=1):
            doc = int(doc)
            if doc < 0 or not np.isfinite(score):
                continue
            if doc in banned:
                counts["removed_positive"] += 1
                continue
            if g.exclude_duplicates and norm_corpus[doc] in banned_text:
                counts["removed_duplicate_text"] += 1
                continue
            candidates.append((rank, doc, float(score)))
        candidates = candidates[cfg.skip_top : cfg.skip_top + cfg.window]
        survivors = []
        for rank, doc, score in candidates:
            # guards compare in the primary score space (BM25 for bm25, cosine for dense and hybrid)
            primary = score if cfg.method != "hybrid" else float(q_emb[i] @ c_emb[doc])
            if g.max_relative_score is not None and primary > g.max_relative_score * primary_pos[i]:
                counts["removed_relative_score"] += 1
                continue
            if g.min_margin is not None and primary > primary_pos[i] - g.min_margin:
                counts["removed_margin"] += 1
                continue
            if g.dense_max_similarity is not None and float(q_emb[i] @ c_emb[doc]) > g.dense_max_similarity:
                counts["removed_dense_cross_check"] += 1
                continue
            if g.bm25_max_relative_score is not None and bm25.score_pairs([query], np.array([doc]))[0] > (
                g.bm25_max_relative_score * bm25_pos[i]
            ):
                counts["removed_bm25_cross_check"] += 1
                continue
            survivors.append((rank, doc, score))
        if len(survivors) < cfg.num_negatives:
            counts["dropped_too_few_negatives"] += 1
            continue
        chosen = survivors[: cfg.num_negatives] if cfg.sampling == "top" else sorted(
            rng.sample(survivors, cfg.num_negatives))
        kept_rows += 1
        rows["anchor"].append(query)
        rows["positive"].append(positive)
        rows["positive_score"].append(float(primary_pos[i]))
        for n, (rank, doc, score) in enumerate(chosen, start=1):
            rows[f"negative_{n}"].append(text_of[doc])
            rows[f"negative_{n}_score"].append(score)
            rows[f"negative_{n}_rank"].append(rank)
    if kept_rows == 0:
        raise DataError(f"mining: no query kept {cfg.num_negatives} negatives after the guards ({dict(counts)}); "
                        "widen window, lower num_negatives or relax guards")
    order = ["anchor", "positive", "positive_score"] + [
        f"negative_{n}{suffix}" for n in range(1, cfg.num_negatives + 1) for suffix in ("", "_score", "_rank")]
    stats = {
        "method": cfg.method, "queries": len(queries), "rows_written": kept_rows, "corpus_size": len(corpus),
        "num_negatives": cfg.num_negatives, "counts": dict(counts),
        "texts_encoded": encoder.encoded if encoder else 0,
        "seconds": {k: round(v, 3) for k, v in {**timings, "total_s": time.perf_counter() - started}.items()},
    }
    return MiningResult(datasets.Dataset.from_dict({k: rows[k] for k in order}), stats)


def write(result: MiningResult, cfg: MiningConfig) -> Path:
    """Write the mined rows (jsonl, parquet or a datasets folder) and `<output>.stats.json`, each atomically;
    an earlier output is replaced only when `mmssl mine` wrote it and `overwrite` is set."""
    check_output(cfg)
    out = Path(cfg.output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.mmssl-tmp")
    old = out.with_name(f".{out.name}.mmssl-old")
    for leftover in (tmp, old):  # our own temporaries of an interrupted run
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    if out.suffix == ".jsonl":
        result.dataset.to_json(str(tmp), lines=True)
    elif out.suffix == ".parquet":
        result.dataset.to_parquet(str(tmp))
    else:
        result.dataset.save_to_disk(str(tmp))
    stats_tmp = out.with_name(f".{_stats_path(out).name}.mmssl-tmp")
    stats_tmp.write_text(json.dumps({**result.stats, "config": dump(cfg)}, indent=2))
    if out.is_dir():  # a folder cannot be replaced in one rename: move the old one aside first
        os.replace(out, old)
    os.replace(tmp, out)
    os.replace(stats_tmp, _stats_path(out))
    if old.is_dir():
        shutil.rmtree(old)
    return out
