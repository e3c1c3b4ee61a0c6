"""Image-caption data for CLIP: the built-in world, jsonl/csv/parquet tables of image paths and captions,
image folders (with a ``metadata.jsonl``/``metadata.csv`` of captions, or class subfolders) and WebDataset
tar shards (read as a stream with the standard ``tarfile`` module).

Every image is decoded **once**, when the data is loaded: converted to RGB (palette, alpha over white,
16-bit, grayscale, CMYK), resized on its shorter side (bicubic) and centre-cropped to the model's input
size exactly as open_clip's evaluation preprocessing does, and kept as one uint8 tensor ``[N, 3, S, S]``.
Training views are then cut from that tensor in batches (`mmssl.data.image_views`). An image that is
missing, empty, truncated or not decodable is skipped and counted (``ImageTextTable.skipped``), never a crash.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from mmssl.errors import DataError
from mmssl.eval.zero_shot import check_classes
from mmssl.recipes import DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_TABLE_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_name", "file", "path", "img")
_CAPTION_COLUMNS = ("captions", "caption", "text", "title", "sentences")
_LABEL_COLUMNS = ("label", "class", "class_name")


class BadImage(Exception):
    """An image that cannot be used; the message says why."""


@dataclass
class ImageTextTable:
    """Decoded images with their captions (and class labels where known)."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    captions: list[list[str]]
    labels: torch.Tensor  # long [N], -1 where unknown
    zero_shot: torch.Tensor  # bool [N]: counts for zero-shot accuracy (world: single-object scenes)
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


# ---------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited over white; 16/32-bit images scaled (not clipped) to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image).astype(np.float64)
        peak = array.max(initial=0)
        if mode.startswith("I;16") or (mode == "I" and peak > 255):
            array = array / 257.0  # 16-bit range -> 8-bit range
        elif mode == "F" and peak <= 1.0:
            array = array * 255.0
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")
        mode = "L"
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("LA")
        mode = "LA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(source: Any) -> Image.Image:
    """Decode a path, bytes, a ``{"bytes"|"path"}`` dict or a PIL image into a fully loaded RGB image."""
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, dict):
            source = source.get("bytes") or source.get("path")
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise BadImage("empty (0 bytes)")
            handle: Any = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise BadImage("missing file")
            if path.stat().st_size == 0:
                raise BadImage("empty (0 bytes)")
            handle = path
        else:
            raise BadImage(f"no image (got {type(source).__name__})")
        try:
            image = Image.open(handle)
            image.load()
        except Image.DecompressionBombError:
            raise BadImage("too large (decompression bomb limit)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadImage(f"unreadable ({exc})") from None
    try:
        return to_rgb(image)
    except (OSError, ValueError) as exc:
        raise BadImage(f"cannot convert to RGB ({exc})") from None


def resize_center_crop(image: Image.Image, size: int) -> torch.Tensor:
    """open_clip's eval geometry (shorter side to ``size``, bicubic, centre crop) -> uint8 [3, size, size]."""
    from torchvision.transforms.v2 import functional as TF

    if image.size != (size, size):
        image = TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC), size)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _decode(source: Any, size: int) -> torch.Tensor:
    return resize_center_crop(open_image(source), size)


# ---------------------------------------------------------------------------------------------------------
# building a table
# ---------------------------------------------------------------------------------------------------------


def _clean_captions(value: Any, column: str = "captions", where: str = "data") -> list[str]:
    """Non-empty captions of one row (a string, a list of strings, or a record with captions); nulls count as
    none; any other type is a clear error naming the column."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        value = value.get("captions") or value.get("caption") or value.get("text") or []
        return _clean_captions(value, column, where)
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        if not isinstance(item, str):
            kind = type(item).__name__ + (" lists" if items is value else " values")
            raise DataError(f"{where}: caption column {column!r} holds {kind}, not text; map the column that holds "
                            "the captions with data.columns.captions=<column name>, or write them as strings")
        if item.strip():
            out.append(item.strip())
    return out


def build_table(
    rows: Iterable[tuple[Any, list[str], Any, bool]],
    size: int,
    class_index: dict[str, int] | None = None,
    where: str = "data",
    workers: int | None = None,
    store: Path | None = None,
) -> ImageTextTable:
    """Decode ``(image source, captions, label, zero_shot)`` rows; skip and count the bad ones.

    Images are decoded in chunks straight into one uint8 array: in memory, or with `store` (a file path) in
    a memory-mapped file whose name is unlinked at once, so the OS pages images in and out as training
    reads them and the file disappears with the process (even a killed one).
    """
    rows = list(rows)
    skipped_reasons: dict[str, int] = {}
    examples: list[str] = []

    def skip(reason: str, what: Any) -> None:
        key = reason.split(" (")[0]
        skipped_reasons[key] = skipped_reasons.get(key, 0) + 1
        if len(examples) < 20:
            name = what if isinstance(what, (str, os.PathLike)) else (what.get("path") if isinstance(what, dict) else None)
            examples.append(f"{name or '<in-memory image>'}: {reason}")

    def work(row):
        try:
            return _decode(row[0], size), None
        except BadImage as exc:
            return None, str(exc)

    shape = (max(len(rows), 1), 3, size, size)
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        images = torch.from_numpy(np.lib.format.open_memmap(store, mode="w+", dtype=np.uint8, shape=shape))
        store.unlink()  # the mapping lives on; nothing is left behind
    else:
        images = torch.empty(shape, dtype=torch.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(rows) > 64 else None
    captions, labels, zs = [], [], []
    kept = 0
    try:
        for start in range(0, len(rows), 4096):
            part = rows[start:start + 4096]
            decoded = list(pool.map(work, part, chunksize=64)) if pool else [work(row) for row in part]
            for (source, caps, label, zero_shot), (tensor, error) in zip(part, decoded):
                caps = _clean_captions(caps)
                if tensor is None:
                    skip(error or "unreadable", source)
                    continue
                if not caps:
                    skip("no caption", source)
                    continue
                images[kept] = tensor
                kept += 1
                captions.append(caps)
                labels.append(_label_index(label, class_index, where))
                zs.append(bool(zero_shot))
    finally:
        if pool is not None:
            pool.shutdown()
    skipped = sum(skipped_reasons.values())
    if skipped:
        log.warning("%s: skipped %d of %d examples (%s); e.g. %s", where, skipped, len(rows),
                    ", ".join(f"{k}: {v}" for k, v in sorted(skipped_reasons.items())), "; ".join(examples[:3]))
    if not kept:
        detail = f" (all {len(rows)} skipped: {skipped_reasons}; e.g. {examples[:3]})" if rows else ""
        raise DataError(f"{where}: no usable image-caption examples{detail}")
    return ImageTextTable(
        images=images[:kept] if store is not None or kept == len(rows) else images[:kept].clone(),
        captions=captions,
        labels=torch.tensor(labels, dtype=torch.long),
        zero_shot=torch.tensor(zs, dtype=torch.bool),
        skipped=skipped,
        skipped_reasons=skipped_reasons,
        skipped_examples=examples,
    )


def _label_index(label: Any, class_index: dict[str, int] | None, where: str) -> int:
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


# ---------------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RawRows:
    """Undecoded rows of one split, and the class names the data itself implies (if any)."""

    rows: list[tuple[Any, list[str], Any, bool]]
    class_names: list[str] | None = None
    where: str = "data"


def _world_rows(cfg: DataConfig, split: str) -> RawRows:
    from mmssl.data.world import class_names, world_columns

    cols = world_columns(cfg.world, "image_text", split)
    rows = list(zip(cols["image"], cols["captions"], cols["label"], cols["single"]))
    return RawRows(rows, class_names(cfg.world), f"built-in world ({split})")


def _expand(path: str, extensions: set[str]) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
    if p.is_file():
        return [p]
    return sorted(Path(f) for f in glob.glob(os.path.expanduser(path), recursive=True) if Path(f).is_file())


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


def _table_rows(path: str, fmt: str, mapping: dict[str, str], where: str, default_image: tuple[str, ...] = _IMAGE_COLUMNS) -> RawRows:
    files = _expand(path, set(_TABLE_EXTENSIONS))
    if not files:
        raise DataError(f"{where}: no such file or folder (or no .jsonl/.csv/.parquet files in it)")
    table = _read_table(files, fmt, where)
    if not table:
        raise DataError(f"{where}: no examples found (empty data)")
    columns = [c for c in table[0] if c != "__dir__"]
    image_col = _pick(columns, mapping, "image", default_image, where)[0]
    caption_cols = _pick(columns, mapping, "captions", _CAPTION_COLUMNS, where)
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
            caps.extend(_clean_captions(value, col, where))
        label = item.get(label_cols[0]) if label_cols else None
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        rows.append((_resolve(item.get(image_col), item["__dir__"]), caps, label, label is not None and label != ""))
    return RawRows(rows, _names_from_labels([r[2] for r in rows]), where)


def _names_from_labels(labels: list[Any]) -> list[str] | None:
    names = sorted({str(x).strip() for x in labels if isinstance(x, str) and x.strip()})
    return names or None


def _imagefolder_rows(path: str, mapping: dict[str, str], where: str) -> RawRows:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{where}: data.format=imagefolder needs a folder")
    meta = [root / name for name in ("metadata.jsonl", "metadata.csv", "metadata.parquet") if (root / name).is_file()]
    if meta:
        return _table_rows(str(meta[0]), "auto", mapping, where, default_image=("file_name",) + _IMAGE_COLUMNS)
    images = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{where}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
    rows = []
    for f in images:
        if f.parent == root:
            raise DataError(
                f"{where}: {f.name} has no caption; add a metadata.jsonl (file_name + caption columns) "
                "or put images in class subfolders (the folder name becomes the caption and label)"
            )
        name = f.parent.relative_to(root).as_posix().replace("_", " ")
        rows.append((str(f), [name], name, True))
    return RawRows(rows, _names_from_labels([r[2] for r in rows]), where)


def _tar_samples(files: list[Path], where: str) -> Iterator[dict[str, bytes]]:
    """WebDataset convention: consecutive members sharing a key (path up to the first dot of the basename)."""
    for f in files:
        current: dict[str, bytes] = {}
        key = None
        try:
            with tarfile.open(f, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    directory, base = os.path.split(member.name)
                    if "." not in base:
                        continue
                    stem, ext = base.split(".", 1)
                    sample_key = f"{directory}/{stem}"
                    if sample_key != key:
                        if current:
                            yield current
                        current, key = {"__key__": f"{f.name}:{sample_key}".encode()}, sample_key
                    handle = tar.extractfile(member)
                    current[ext.lower()] = handle.read() if handle is not None else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            log.warning("%s: shard %s ends early or is corrupt (%s); using the samples read before that", where, f, exc)
        if current:
            yield current


def _webdataset_rows(path: str, where: str) -> RawRows:
    files = _expand(path, {".tar"})
    if not files:
        raise DataError(f"{where}: no .tar shards found")
    rows = []
    for sample in _tar_samples(files, where):
        image = next((sample[e] for e in ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif") if e in sample), None)
        caps: list[str] = []
        label: Any = None
        for ext in ("txt", "text", "caption"):
            if ext in sample:
                caps.extend(_clean_captions(sample[ext].decode("utf-8", errors="replace")))
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except ValueError:
                meta = {}
            if isinstance(meta, dict):
                if not caps:
                    caps = _clean_captions(meta)
                label = meta.get("label", label)
        if "cls" in sample:
            text = sample["cls"].decode("utf-8", errors="replace").strip()
            label = int(text) if text.lstrip("-").isdigit() else text
        key = sample["__key__"].decode()
        rows.append(({"bytes": image if image is not None else b"", "path": key}, caps, label, label is not None))
    return RawRows(rows, _names_from_labels([r[2] for r in rows]), where)


def _hub_rows(cfg: DataConfig, split: str, where: str) -> RawRows:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.path, split=split)
    except Exception as exc:  # datasets raises many types
        raise DataError(f"{where}: could not load this Hub dataset (split {split!r}): {exc}") from None
    columns = ds.column_names
    image_col = _pick(columns, cfg.columns, "image", _IMAGE_COLUMNS, where)[0]
    caption_cols = _pick(columns, cfg.columns, "captions", _CAPTION_COLUMNS, where)
    label_cols = _pick(columns, cfg.columns, "label", _LABEL_COLUMNS, where, required=False)
    if isinstance(ds.features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    names = None
    if label_cols and isinstance(ds.features.get(label_cols[0]), datasets.ClassLabel):
        names = list(ds.features[label_cols[0]].names)
    rows = []
    for item in ds:
        caps = [c for col in caption_cols for c in _clean_captions(item[col], col, where)]
        label = item[label_cols[0]] if label_cols else None
        rows.append((item[image_col], caps, label, label is not None))
    return RawRows(rows, names, where)


def raw_rows(cfg: DataConfig, split: str = "train") -> RawRows:
    """The undecoded rows of the train split (or, with ``split='eval'``, of ``data.eval_path``/the world's eval)."""
    if cfg.source == "world":
        return _world_rows(cfg, split)
    path = cfg.path if split == "train" else cfg.eval_path
    where = f"data.path {path!r}" if split == "train" else f"data.eval_path {path!r}"
    if path is None:
        raise DataError("data.path is required when data.source is not 'world'")
    if cfg.source == "hub":  # data.eval_path names the eval split of a Hub dataset
        return _hub_rows(cfg, cfg.split if split == "train" else cfg.eval_path, where)
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
        return _webdataset_rows(path, where)
    if fmt == "imagefolder":
        return _imagefolder_rows(path, cfg.columns, where)
    return _table_rows(path, fmt, cfg.columns, where)


@dataclass
class ImageTextSplits:
    train: ImageTextTable
    eval: ImageTextTable | None
    class_names: list[str] | None


STORE_AUTO_BYTES = 2 << 30


def load_image_text(cfg: DataConfig, size: int, seed: int = 0, class_names: list[str] | None = None,
                    store: str = "memory", store_dir: Path | None = None) -> ImageTextSplits:
    """Load, decode and split image-caption data; ``class_names`` (from the recipe) override the data's.
    ``store``: decoded images in ``memory``, on ``disk`` (memory-mapped files in `store_dir`, see
    `build_table`), or ``auto`` (disk when they would take more than 2 GiB)."""
    train_rows = raw_rows(cfg, "train")
    names = class_names or train_rows.class_names
    check_classes(names or [], "objective.class_names" if class_names else f"{train_rows.where}: class names")
    index = {n: i for i, n in enumerate(names)} if names else None
    rows = train_rows.rows
    eval_rows = None
    if cfg.source == "world" or cfg.eval_path:
        eval_rows = raw_rows(cfg, "eval").rows
    if cfg.max_examples is not None:
        rows = rows[: cfg.max_examples]
    if eval_rows is None and cfg.eval_fraction > 0 and len(rows) >= 20:
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
        n_eval = max(1, int(round(cfg.eval_fraction * len(rows))))
        eval_rows = [rows[i] for i in sorted(order[:n_eval])]
        rows = [rows[i] for i in sorted(order[n_eval:])]
    decoded_bytes = (len(rows) + len(eval_rows or [])) * 3 * size * size
    on_disk = store == "disk" or (store == "auto" and decoded_bytes > STORE_AUTO_BYTES)
    if on_disk and store_dir is None:
        raise ValueError("store_dir is needed to keep decoded images on disk")
    log.info("%s: %d images, %.2f GB decoded, kept %s", train_rows.where, len(rows) + len(eval_rows or []),
             decoded_bytes / 1e9, f"on disk in {store_dir}" if on_disk else "in memory")
    stores = [store_dir / f".images-{split}-rank{os.environ.get('RANK', '0')}-{os.getpid()}.npy" if on_disk else None
              for split in ("train", "eval")]
    train = build_table(rows, size, index, train_rows.where, store=stores[0])
    evaluation = build_table(eval_rows, size, index, f"{train_rows.where} (eval)", store=stores[1]) if eval_rows else None
    return ImageTextSplits(train, evaluation, names)
