"""Where images come from: the built-in world, jsonl/csv/parquet tables of image paths (or embedded bytes),
image folders (class subfolders, a ``metadata.jsonl``/``metadata.csv``, or a flat folder), WebDataset tar
shards (read as a stream with the standard ``tarfile`` module) and Hub datasets.

Every reader yields undecoded rows ``(image source, captions, label, zero_shot)``, shared by image-caption
loading for CLIP (`mmssl.data.image_text`, which requires captions) and image-only loading for image SSL
(`load_images` here, which reads no captions and keeps every decodable image). Decoding is
`mmssl.data.images`. A user error (no such path, a folder without images, a table without an image column)
is one `DataError` naming the path and the fix.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmssl.data.images import IMAGE_EXTENSIONS, decode_images, store_files
from mmssl.data.captions import clean_captions
from mmssl.errors import DataError
from mmssl.data.classes import check_classes
from mmssl.config import DataConfig

log = logging.getLogger(__name__)

_TABLE_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_name", "file", "path", "img")
_CAPTION_COLUMNS = ("captions", "caption", "text", "title", "sentences")
_LABEL_COLUMNS = ("label", "class", "class_name")

Row = tuple[Any, list[str], Any, bool]  # (image source, captions, label or None, counts for zero-shot)


@dataclass
class RawRows:
    """Undecoded rows of one split, and the class names the data itself implies (if any)."""

    rows: list[Row]
    class_names: list[str] | None = None
    where: str = "data"


# ---------------------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------------------


def label_index(label: Any, class_index: dict[str, int] | None, where: str) -> int:
    """A row's label as a class index: ints as they are, names looked up in `class_index`; -1 if unknown."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return -1
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if class_index is not None and not 0 <= int(label) < len(class_index):
            raise DataError(f"{where}: label {int(label)} is outside the {len(class_index)} class names")
        return int(label)
    if class_index is None:
        return -1
    text = str(label).strip()
    if text not in class_index:
        raise DataError(f"{where}: label {text!r} is not one of the class names {list(class_index)[:10]}...")
    return class_index[text]


def _names_from_labels(labels: list[Any]) -> list[str] | None:
    names = sorted({str(x).strip() for x in labels if isinstance(x, str) and x.strip()})
    return names or None


# ---------------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------------


def _world_rows(cfg: DataConfig, split: str, captions: bool) -> RawRows:
    from mmssl.data import world

    if captions:
        cols = world.world_columns(cfg.world, "image_text", split)
        rows = list(zip(cols["image"], cols["captions"], cols["label"], cols["single"]))
        return RawRows(rows, world.class_names(cfg.world), f"built-in world ({split})")
    cols = world.world_columns(cfg.world, "images", split)
    # Image-only: the shape task. A two-object scene shows two shapes, so its label is unknown (-1).
    rows = [(image, [], label if single else None, single)
            for image, label, single in zip(cols["image"], cols["label"], cols["single"])]
    return RawRows(rows, world.shape_names(cfg.world), f"built-in world ({split})")


def _expand(path: str, extensions: set[str]) -> list[Path]:
    """Files of a path, folder, glob or brace pattern (``shard-{00000..00099}.tar``)."""
    from mmssl.data.shards import expand_braces

    found: list[Path] = []
    for pattern in expand_braces(os.path.expanduser(path)):
        p = Path(pattern)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in extensions))
        elif p.is_file():
            found.append(p)
        else:
            found.extend(sorted(Path(f) for f in glob.glob(pattern, recursive=True) if Path(f).is_file()))
    return found


def _pick(columns: list[str], mapping: dict[str, str], role: str, candidates: tuple[str, ...], where: str,
          required: bool = True) -> list[str]:
    if role in mapping:
        names = [c.strip() for c in mapping[role].split(",") if c.strip()]
        missing = [c for c in names if c not in columns]
        if missing:
            raise DataError(f"{where}: data.columns.{role} names {missing}, not in the data's columns {columns}")
        return names
    for name in candidates:
        if name in columns:
            return [name]
    if required:
        raise DataError(
            f"{where}: no {role} column (looked for {', '.join(candidates)}); the data has columns {columns}. "
            f"Map one with data.columns.{role}=<column>"
        )
    return []


def _read_table(files: list[Path], fmt: str, where: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in files:
        kind = fmt if fmt in ("jsonl", "csv", "parquet") else _TABLE_EXTENSIONS.get(f.suffix.lower())
        try:
            if kind == "jsonl":
                with open(f, encoding="utf-8") as handle:
                    text = handle.read()
                if f.suffix.lower() == ".json" and text.lstrip().startswith("["):
                    items = json.loads(text)
                else:
                    items = [json.loads(line) for line in text.splitlines() if line.strip()]
            elif kind == "csv":
                with open(f, encoding="utf-8", newline="") as handle:
                    items = list(csv.DictReader(handle, delimiter="\t" if f.suffix.lower() == ".tsv" else ","))
            elif kind == "parquet":
                import datasets

                items = datasets.Dataset.from_parquet(str(f)).to_list()
            else:
                raise DataError(f"{where}: cannot tell the format of {str(f)!r}; set data.format")
        except (ValueError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{where}: could not read {str(f)!r} as {kind}: {exc}") from None
        for item in items:
            if not isinstance(item, dict):
                raise DataError(f"{where}: {str(f)!r} holds a non-object row {item!r}")
            item["__dir__"] = str(f.parent)
            rows.append(item)
    return rows


def _resolve(value: Any, base: str) -> Any:
    if isinstance(value, str) and not os.path.isabs(value):
        return os.path.join(base, value)
    if isinstance(value, dict) and value.get("path") and not value.get("bytes"):
        return _resolve(value["path"], base)
    return value


def _table_rows(path: str, fmt: str, mapping: dict[str, str], where: str, captions: bool,
                default_image: tuple[str, ...] = _IMAGE_COLUMNS) -> RawRows:
    files = _expand(path, set(_TABLE_EXTENSIONS))
    if not files:
        raise DataError(f"{where}: no such file or folder (or no .jsonl/.csv/.parquet files in it)")
    table = _read_table(files, fmt, where)
    if not table:
        raise DataError(f"{where}: no examples found (empty data)")
    columns = [c for c in table[0] if c != "__dir__"]
    image_col = _pick(columns, mapping, "image", default_image, where)[0]
    caption_cols = _pick(columns, mapping, "captions", _CAPTION_COLUMNS, where) if captions else []
    label_cols = _pick(columns, mapping, "label", _LABEL_COLUMNS, where, required=False)
    rows = []
    for item in table:
        caps: list[str] = []
        for col in caption_cols:
            value = item.get(col)
            if isinstance(value, str) and value.strip().startswith("[") and len(caption_cols) == 1:
                try:  # a csv cell holding a JSON list of captions
                    value = json.loads(value)
                except ValueError:
                    pass
            caps.extend(clean_captions(value, col, where))
        label = item.get(label_cols[0]) if label_cols else None
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        rows.append((_resolve(item.get(image_col), item["__dir__"]), caps, label, label is not None and label != ""))
    return RawRows(rows, _names_from_labels([r[2] for r in rows]), where)


def _imagefolder_rows(path: str, mapping: dict[str, str], where: str, captions: bool) -> RawRows:
    """Class subfolders (the folder name is the label, and the caption), a metadata table, or, for image-only
    data, a flat folder of images (no labels; images directly in the root of a class-folder tree have none)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{where}: data.format=imagefolder needs a folder")
    meta = [root / name for name in ("metadata.jsonl", "metadata.csv", "metadata.parquet") if (root / name).is_file()]
    if meta:
        return _table_rows(str(meta[0]), "auto", mapping, where, captions, default_image=("file_name",) + _IMAGE_COLUMNS)
    images = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{where}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder or its "
                        "subfolders; point data.path at a folder of images (class subfolders give labels)")
    rows: list[Row] = []
    for f in images:
        if f.parent == root:
            if captions:
                raise DataError(
                    f"{where}: {f.name} has no caption; add a metadata.jsonl (file_name + caption columns) "
                    "or put images in class subfolders (the folder name becomes the caption and label)"
                )
            rows.append((str(f), [], None, False))
            continue
        name = f.parent.relative_to(root).as_posix().replace("_", " ")
        rows.append((str(f), [name] if captions else [], name, True))
    return RawRows(rows, _names_from_labels([r[2] for r in rows]), where)


def _webdataset_rows(path: str, where: str, captions: bool) -> RawRows:
    from mmssl.data.shards import Problem, image_bytes, read_tar, record_label
    from mmssl.data.records import record_captions

    files = _expand(path, {".tar"})
    if not files:
        raise DataError(f"{where}: no .tar shards found")
    rows = []
    for f in files:
        for sample in read_tar(str(f)):
            if isinstance(sample, Problem):
                log.warning("%s: %s (%s); using the samples read before that", where, sample.reason, sample.where)
                continue
            image = image_bytes(sample)
            label = record_label(sample)
            caps = record_captions(sample, {}) if captions else []
            rows.append(({"bytes": image if image is not None else b"", "path": sample["__key__"]}, caps, label,
                         label is not None))
    return RawRows(rows, _names_from_labels([r[2] for r in rows]), where)


def _hub_rows(cfg: DataConfig, split: str, where: str, captions: bool) -> RawRows:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.path, split=split)
    except Exception as exc:  # datasets raises many types
        raise DataError(f"{where}: could not load this Hub dataset (split {split!r}): {exc}") from None
    columns = ds.column_names
    image_col = _pick(columns, cfg.columns, "image", _IMAGE_COLUMNS, where)[0]
    caption_cols = _pick(columns, cfg.columns, "captions", _CAPTION_COLUMNS, where) if captions else []
    label_cols = _pick(columns, cfg.columns, "label", _LABEL_COLUMNS, where, required=False)
    if isinstance(ds.features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    names = None
    if label_cols and isinstance(ds.features.get(label_cols[0]), datasets.ClassLabel):
        names = list(ds.features[label_cols[0]].names)
    rows = []
    for item in ds:
        caps = [c for col in caption_cols for c in clean_captions(item[col], col, where)]
        label = item[label_cols[0]] if label_cols else None
        rows.append((item[image_col], caps, label, label is not None))
    return RawRows(rows, names, where)


def raw_rows(cfg: DataConfig, split: str = "train", captions: bool = True) -> RawRows:
    """The undecoded rows of the train split (or, with ``split='eval'``, of ``data.eval_path``/the world's
    eval). ``captions=False`` (image-only data) reads no caption column, so none is required."""
    if cfg.source == "world":
        return _world_rows(cfg, split, captions)
    path = cfg.path if split == "train" else cfg.eval_path
    where = f"data.path {path!r}" if split == "train" else f"data.eval_path {path!r}"
    if path is None:
        raise DataError("data.path is required when data.source is not 'world'")
    if cfg.source == "hub":  # data.eval_path names the eval split of a Hub dataset
        return _hub_rows(cfg, cfg.split if split == "train" else cfg.eval_path, where, captions)
    fmt = cfg.format
    if fmt == "auto":
        p = Path(path).expanduser()
        if p.suffix.lower() == ".tar" or (p.is_dir() and any(p.glob("*.tar"))):
            fmt = "webdataset"
        elif p.is_dir() and not any(f.suffix.lower() in _TABLE_EXTENSIONS for f in p.iterdir()):
            fmt = "imagefolder"
        elif p.is_dir() and any((p / m).is_file() for m in ("metadata.jsonl", "metadata.csv")):
            fmt = "imagefolder"
    if fmt == "txt":
        raise DataError(f"{where}: data.format=txt has no images; use jsonl, csv, parquet, imagefolder or webdataset")
    if fmt == "webdataset":
        return _webdataset_rows(path, where, captions)
    if fmt == "imagefolder":
        return _imagefolder_rows(path, cfg.columns, where, captions)
    return _table_rows(path, fmt, cfg.columns, where, captions)


# ---------------------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SplitRows:
    """Undecoded train and eval rows, the class names and their index, where the data came from, and where
    the eval rows came from (or why there are none)."""

    train: list[Row]
    eval: list[Row] | None
    class_names: list[str] | None
    class_index: dict[str, int] | None
    where: str
    eval_note: str = ""


NO_LABELS_NOTE = ("no eval split: the images carry no class labels (e.g. a flat folder), so every image trains and "
                  "there is nothing to measure kNN/linear-probe accuracy on; set data.eval_path to labelled images to "
                  "evaluate")


def split_rows(cfg: DataConfig, seed: int = 0, class_names: list[str] | None = None, captions: bool = True,
               eval_needs_labels: bool = False) -> SplitRows:
    """Read train and eval rows: eval is ``data.eval_path`` (the world's eval split), else a seeded
    ``data.eval_fraction`` of the train rows (with at least 20 rows), taken after ``data.max_examples``.
    ``class_names`` (from the recipe) override the data's. With `eval_needs_labels` (image-only data, whose
    only evaluation is by class) rows without any label keep every row for training: no fraction is held out."""
    train = raw_rows(cfg, "train", captions)
    names = class_names or train.class_names
    check_classes(names or [], "objective.class_names" if class_names else f"{train.where}: class names")
    index = {n: i for i, n in enumerate(names)} if names else None
    rows = train.rows
    explicit = cfg.source == "world" or cfg.eval_path
    eval_rows = raw_rows(cfg, "eval", captions).rows if explicit else None
    if cfg.max_examples is not None:
        rows = rows[: cfg.max_examples]
    if explicit:
        note = "eval: the world's eval split" if cfg.source == "world" else f"eval: data.eval_path {cfg.eval_path!r}"
    elif cfg.eval_fraction <= 0:
        note = "no eval split: data.eval_fraction is 0"
    elif eval_needs_labels and all(r[2] is None for r in rows):
        note = NO_LABELS_NOTE
    elif len(rows) < 20:
        note = f"no eval split: {len(rows)} rows are too few to hold any out (data.eval_fraction needs 20)"
    else:
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
        n_eval = max(1, int(round(cfg.eval_fraction * len(rows))))
        eval_rows = [rows[i] for i in sorted(order[:n_eval])]
        rows = [rows[i] for i in sorted(order[n_eval:])]
        note = f"eval: a seeded {cfg.eval_fraction:g} of the rows held out (data.eval_fraction)"
    return SplitRows(rows, eval_rows, names, index, train.where, note)


# ---------------------------------------------------------------------------------------------------------
# image-only data
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ImageTable:
    """Decoded images and their class labels (-1 where unknown)."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # long [N]
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class ImageSplits:
    train: ImageTable
    eval: ImageTable | None
    class_names: list[str] | None


def image_table(rows: list[Row], size: int, class_index: dict[str, int] | None = None, where: str = "data",
                store: Path | None = None) -> ImageTable:
    """Decode the rows' images (bad ones skipped and counted) and index their labels."""
    decoded = decode_images([r[0] for r in rows], size, where, store=store)
    labels = [label_index(rows[i][2], class_index, where) for i in decoded.kept]
    return ImageTable(decoded.images, torch.tensor(labels, dtype=torch.long), decoded.skipped,
                      decoded.skipped_reasons, decoded.skipped_examples)


def load_images(cfg: DataConfig, size: int, seed: int = 0, class_names: list[str] | None = None,
                store: str = "memory", store_dir: Path | None = None) -> ImageSplits:
    """Load, decode and split image-only data (captions are neither read nor required).

    Labels come from class subfolders, a label column (``label``/``class``/``class_name`` or
    ``data.columns.label``), WebDataset ``.cls``/json ``label``, a Hub ``ClassLabel``; the built-in world
    gives shape labels (`mmssl.data.world.shape_names`; two-object scenes: -1). Images without a label
    get -1. ``class_names`` override the data's; ``store`` as in `mmssl.data.images.store_files`.
    """
    split = split_rows(cfg, seed, class_names, captions=False, eval_needs_labels=True)
    count = len(split.train) + len(split.eval or [])
    stores = store_files(store, store_dir, count, size, split.where)
    train = image_table(split.train, size, split.class_index, split.where, stores[0])
    evaluation = image_table(split.eval, size, split.class_index, f"{split.where} (eval)", stores[1]) if split.eval else None
    log.info("%s: %d training images, %d eval images (%s)", split.where, len(train),
             len(evaluation) if evaluation is not None else 0, split.eval_note)
    return ImageSplits(train, evaluation, split.class_names)


def data_description(cfg: DataConfig) -> str:
    """What a model was trained on, for its exported config (`Backbone.save(trained_on=...)`): the world, a Hub
    dataset id and split, or the local file/folder names (never their full paths, which may be private)."""
    if cfg.source == "world":
        return "mmssl's built-in synthetic world"
    if cfg.source == "hub":
        return f"the Hub dataset {cfg.path!r} (split {cfg.split!r})"
    names = [Path(part).name or part for part in (cfg.path or "").split("::") if part]
    return "local images (" + ", ".join(repr(n) for n in names) + ")"


HEAD_IMAGES = 1024  # images from the start of a stream kept for batch-norm statistics when there is no eval set


def streamed_image_splits(cfg: DataConfig, size: int, seed: int = 0) -> ImageSplits:
    """Evaluation images for a run that streams its training images: the built-in world's; else
    ``data.eval_path`` read whole and split in half (seeded) into the kNN bank / probe training set and the
    held-out queries (not split when its images carry no labels: no evaluation); else no evaluation, and the
    first images of the stream (unlabelled, at most 1,024) only for batch-norm statistics at export."""
    import dataclasses

    from mmssl.data.stream_sources import ImageTransform, data_sources, first_records
    from mmssl.data.streaming import Skip

    if cfg.source == "world":
        return load_images(dataclasses.replace(cfg, streaming=False), size, seed)
    if cfg.eval_path:
        held = dataclasses.replace(cfg, path=cfg.eval_path, eval_path=None, eval_fraction=0.5, max_examples=None,
                                   weights=None, streaming=False, format="auto" if "::" in (cfg.path or "") else cfg.format,
                                   split=cfg.eval_path if cfg.source == "hub" else cfg.split)
        splits = load_images(held, size, seed)  # unlabelled: all of it in `train` (batch-norm statistics), no eval
        log.info("data.path is streamed: training images come from the stream; data.eval_path %r gives %s",
                 cfg.eval_path, f"{len(splits.train)} kNN-bank / probe-training and {len(splits.eval)} query images"
                 if splits.eval is not None else
                 "no evaluation: they carry no class labels (batch-norm statistics only)")
        return splits
    log.info("data.path is streamed: training images come from the stream, 0 eval images (no eval split: "
             "data.eval_path is not set), so no kNN/probe evaluation during training")
    transform = ImageTransform(size, cfg.columns)
    images = []
    for record in first_records(data_sources(cfg, "images"), HEAD_IMAGES * 2):
        try:
            images.extend(sample["image"] for sample in transform(record))
        except Skip:
            continue
        if len(images) >= HEAD_IMAGES:
            break
    if not images:
        raise DataError(f"data.path {cfg.path!r}: no usable image in the first {HEAD_IMAGES * 2} records of the stream")
    table = ImageTable(torch.stack(images), torch.full((len(images),), -1, dtype=torch.long))
    return ImageSplits(table, None, None)
