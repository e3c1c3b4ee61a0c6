"""Text pairs for contrastive training: (anchor, positive) with optional hard-negative columns (``negative`` or
``negative_1..k``), unlabeled sentences for unsupervised SimCSE, and held-out pairs for evaluation."""

from __future__ import annotations

import logging
import re
from typing import Any

import datasets
import torch

from mmssl.config import DataConfig
from mmssl.data.sources import Splits, load_files, load_hub, load_splits
from mmssl.errors import DataError

log = logging.getLogger(__name__)

NEGATIVE = re.compile(r"^negative(_(\d+))?$")


def negative_order(column: str) -> int:
    match = NEGATIVE.match(column)
    return int(match.group(2)) if match and match.group(2) else 0


def _available_columns(cfg: DataConfig) -> list[str]:
    """Column names of the recipe's pairs data, before roles are selected."""
    if cfg.source == "world":
        return ["anchor", "positive", "negative", "label"]
    if cfg.source == "files":
        return load_files(cfg.path, cfg.format).column_names
    return load_hub(cfg.path, cfg.split).column_names


def negative_columns(cfg: DataConfig) -> list[str]:
    """The hard-negative roles of the data: mapped ones (data.columns.negative_1, ...) or the columns present."""
    mapped = [role for role in cfg.columns if NEGATIVE.match(role)]
    if mapped:
        return sorted(mapped, key=negative_order)
    available = set(_available_columns(cfg))
    if "negative" in available:
        return ["negative"]
    found, k = [], 1
    while f"negative_{k}" in available:
        found.append(f"negative_{k}")
        k += 1
    return found


def check_texts(ds: datasets.Dataset, columns: list[str], where: str) -> None:
    for column in dict.fromkeys(columns):
        for index, text in enumerate(ds[column]):
            if not isinstance(text, str) or not text.strip():
                raise DataError(
                    f"{where}: row {index} has an empty or missing {column!r} ({text!r}); every pair needs text on "
                    "each side: remove or fix such rows"
                )


def load_pair_splits(cfg: DataConfig, mode: str, hard_negatives: bool, seed: int) -> tuple[Splits, list[str]]:
    """Train/eval tables and the text columns each example is encoded from ("views"): ``[text, text]`` for
    unsupervised SimCSE, ``[anchor, positive, negatives...]`` for pairs."""
    if mode == "unsupervised":
        splits, views = load_splits(cfg, "text", ["text"], seed=seed), ["text", "text"]
    else:
        roles = ["anchor", "positive", *(negative_columns(cfg) if hard_negatives else [])]
        splits, views = load_splits(cfg, "pairs", roles, seed=seed), roles
    where = "built-in world" if cfg.source == "world" else f"data.path {cfg.path!r}"
    check_texts(splits.train, views, where)
    return splits, views


def stream_pair_splits(cfg: DataConfig, mode: str, hard_negatives: bool, head: list[dict[str, Any]],
                       seed: int) -> tuple[Splits, list[str]]:
    """For streamed pairs: the views (hard-negative columns mapped in data.columns or present in the first
    records `head`), and a table of `head` (to train a tokenizer) beside the eval split read whole."""
    from mmssl.data.sources import eval_splits, map_columns

    if mode == "unsupervised":
        roles, views = ["text"], ["text", "text"]
    else:
        negatives = [role for role in cfg.columns if NEGATIVE.match(role)]
        if not negatives and hard_negatives and head:
            present = set(head[0])
            negatives = ["negative"] if "negative" in present else sorted(
                (c for c in present if NEGATIVE.match(c)), key=negative_order)
        roles = ["anchor", "positive", *(sorted(negatives, key=negative_order) if hard_negatives else [])]
        views = roles
    where = "built-in world" if cfg.source == "world" else f"data.path {cfg.path!r}"
    columns = {role: [r.get(cfg.columns.get(role, role)) for r in head] for role in roles}
    if not head:
        raise DataError(f"{where}: no records in the stream")
    sample = map_columns(datasets.Dataset.from_dict(columns), roles, {}, where)
    splits = eval_splits(cfg, "text" if mode == "unsupervised" else "pairs", roles, seed)
    return Splits(sample, splits.eval), views


def eval_pairs(cfg: DataConfig, path: str | None, mode: str, split_eval: datasets.Dataset | None,
               max_pairs: int | None) -> dict[str, list] | None:
    """Held-out (anchor, positive[, negative][, score]) rows: from `path` (objective.eval_pairs), the world's
    eval scenes, or the eval split of supervised pairs; None (with a warning) when there are none."""
    if path:
        ds = load_files(path, "auto", key="objective.eval_pairs")
        where = f"objective.eval_pairs {path!r}"
        for column in ("anchor", "positive"):
            if column not in ds.column_names:
                raise DataError(f"{where}: column {column!r} not found; the data has columns {ds.column_names}")
    elif cfg.source == "world":
        from mmssl.data.world import world_columns

        ds = datasets.Dataset.from_dict(world_columns(cfg.world, "pairs", "eval"))
        where = "built-in world (eval)"
    elif mode == "supervised" and split_eval is not None and len(split_eval):
        ds, where = split_eval, "eval split"
    else:
        log.warning("no evaluation pairs: set objective.eval_pairs to a file with anchor/positive columns")
        return None
    if max_pairs is not None:
        ds = ds.select(range(min(max_pairs, len(ds))))
    negative = "negative" if "negative" in ds.column_names else next(
        (c for c in sorted(ds.column_names, key=negative_order) if NEGATIVE.match(c)), None)
    check_texts(ds, ["anchor", "positive"] + ([negative] if negative else []), where)
    rows = {"anchor": list(ds["anchor"]), "positive": list(ds["positive"])}
    if negative:
        rows["negative"] = list(ds[negative])
    if "score" in ds.column_names:
        rows["score"] = [float(s) for s in ds["score"]]
    return rows if len(rows["anchor"]) else None


class Rows(torch.utils.data.Dataset):
    """Tokenised rows held as Python lists: fast random access for the loader."""

    def __init__(self, columns: dict[str, list]):
        self.columns = columns
        self.size = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[index] for k, v in self.columns.items()}
