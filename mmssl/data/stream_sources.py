"""From a recipe's ``data`` section to streamed sources, and the transforms that turn raw records into
training samples in loader workers: decoded images (image SSL), decoded images with their tokenised captions
(CLIP), packed token blocks (MLM/CLM).

``data.streaming``: ``true``, ``false``, or ``auto`` (stream local data larger than 128 MiB; the built-in world
and Hub datasets are read whole unless asked). A recipe that streams reads its evaluation data, which is
small, whole from ``data.eval_path``.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import torch

from mmssl.config import DataConfig
from mmssl.data.images import BadImage, decode
from mmssl.data.records import record_captions, record_image, record_text
from mmssl.data.shards import (READERS, SHARD_FORMATS, Problem, Record, list_files, read_image_files, read_sizes,
                               shard_format)
from mmssl.data.streaming import STREAM_AUTO_BYTES, SampleStream, Skip, Source, Transform, sample_id
from mmssl.errors import DataError, RecipeError

log = logging.getLogger(__name__)

IMAGE_FOLDER_SHARD = 256  # images per shard of an image folder


def wants_streaming(cfg: DataConfig) -> bool:
    """Whether the recipe's training data is streamed (see the module docstring)."""
    several = cfg.weights is not None or "::" in (cfg.path or "")
    if cfg.curate is not None:
        if cfg.streaming is False:
            raise RecipeError("data.curate filters the stream as it is read; set data.streaming to true or auto "
                              "(or curate first with `mmssl curate` and train on its output)")
        return True
    if cfg.streaming is False and several:
        raise RecipeError("data.path joins several sources with '::' (or sets data.weights), which only a stream "
                          "reads; set data.streaming to true or auto")
    if cfg.streaming != "auto":
        return bool(cfg.streaming)
    if cfg.source != "files" or several:
        return cfg.source == "files"  # several weighted sources only stream
    try:
        files = list_files(cfg.path or "")
    except DataError:
        return False  # the whole-data path reports the problem in its own words
    return sum(os.path.getsize(f) for f in files) > STREAM_AUTO_BYTES


def _world_reader(rows: list[Record]) -> Callable[[tuple[int, int]], Any]:
    def read(span: tuple[int, int]):
        yield from rows[span[0] : span[1]]

    return read


def _world_source(cfg: DataConfig, kind: str, span: int) -> Source:
    from mmssl.data.world import world_columns

    columns = world_columns(cfg.world, kind, "train")
    names = list(columns)
    rows = [{"__key__": f"world/{i}", **{n: columns[n][i] for n in names}} for i in range(len(columns[names[0]]))]
    spans = [(start, min(start + span, len(rows))) for start in range(0, len(rows), span)]
    return Source(spans, _world_reader(rows), "built-in world", num_samples=len(rows))


def _image_folder(path: str, where: str) -> Source:
    from mmssl.data.images import IMAGE_EXTENSIONS

    root = Path(path).expanduser()
    images = sorted(str(f) for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{where}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder or its subfolders")
    shards = [images[i : i + IMAGE_FOLDER_SHARD] for i in range(0, len(images), IMAGE_FOLDER_SHARD)]
    return Source(shards, read_image_files, where, num_samples=len(images))


def data_sources(cfg: DataConfig, kind: str, world_span: int = 64) -> list[Source]:
    """The streamed sources of ``data`` (``kind`` as in `mmssl.data.world.world_columns`, for the world, whose
    rows are cut into shards of `world_span`)."""
    if cfg.source == "world":
        return [_world_source(cfg, kind, world_span)]
    if cfg.source == "hub":
        return [Source([], None, f"data.path {cfg.path!r}", hub=(cfg.path or "", cfg.split, None))]
    specs = (cfg.path or "").split("::")
    weights = cfg.weights or [1.0] * len(specs)
    sources = []
    for spec, weight in zip(specs, weights):
        where = f"data.path {spec!r}"
        p = Path(spec).expanduser()
        if cfg.format == "imagefolder" or (p.is_dir() and not any(f.suffix.lower() in SHARD_FORMATS for f in p.iterdir())):
            source = _image_folder(spec, where)
        else:
            files = list_files(spec)
            fmt = shard_format(files, cfg.format)
            sizes = read_sizes(files)
            source = Source(files, READERS[fmt], where, num_samples=sum(sizes) if sizes else None)
        source.weight = weight
        sources.append(source)
    return sources


def source_records(source: Source) -> Iterator[Record | Problem]:
    """Every raw record (or `Problem`) of one source, in order: shard by shard, or a Hub dataset streamed
    (its rows keyed ``PATH/SPLIT/ROW``)."""
    if source.hub is None:
        for shard in source.shards:
            yield from source.reader(shard)  # type: ignore[misc]
        return
    import datasets

    path, split, name = source.hub
    for number, row in enumerate(datasets.load_dataset(path, name, split=split, streaming=True)):
        yield {"__key__": f"{path}/{split}/{number}", **row}


def raw_records(sources: list[Source]) -> Iterator[Record | Problem]:
    """`source_records` of every source, one after the other."""
    for source in sources:
        yield from source_records(source)


def first_records(sources: list[Source], count: int) -> list[Record]:
    """The first `count` usable raw records of the sources, in shard order (e.g. to train a tokenizer)."""
    usable = (record for record in raw_records(sources) if not isinstance(record, Problem))
    return list(itertools.islice(usable, count))


def data_stream(cfg: DataConfig, sources: list[Source], transform: Transform, seed: int) -> SampleStream:
    """The training stream of ``data``: its sources through `transform`, with the recipe's shuffle buffer and
    resampling (the trainer places it on its process); ``data.curate`` filters each record before `transform`."""
    if cfg.curate is not None:
        from mmssl.data.curated_stream import CuratedTransform

        transform = CuratedTransform(transform, cfg.curate, cfg.columns)
    return SampleStream(sources, transform, seed, shuffle_buffer=cfg.shuffle_buffer, resampled=cfg.resampled)


# ---------------------------------------------------------------------------------------------------------
# transforms (run in loader workers)
# ---------------------------------------------------------------------------------------------------------


class ImageTransform(Transform):
    """Raw record -> ``{"image": uint8 [3, S, S], "id": stable sample id}`` (resized and centre-cropped as
    the whole-data path does); with a tokenizer also ``{"tokens": [n, L], "count": n}`` of its captions."""

    def __init__(self, size: int, mapping: dict[str, str], tokenizer=None):
        self.size, self.mapping, self.tokenizer = size, mapping, tokenizer

    def __call__(self, record: Record) -> list[Any]:
        key = str(record.get("__key__", ""))
        out: dict[str, Any] = {"id": torch.tensor(sample_id(key), dtype=torch.long)}
        if self.tokenizer is not None:
            captions = record_captions(record, self.mapping)
            if not captions:
                raise Skip("no caption")
            out["tokens"] = self.tokenizer(captions)
            out["count"] = len(captions)
        source = record_image(record, self.mapping)
        if source is None:
            raise Skip("no image")
        try:
            out["image"] = decode(source, self.size)
        except BadImage as exc:
            raise Skip(str(exc).split(" (")[0]) from None
        return [out]


class PackTransform(Transform):
    """Text records -> token blocks of exactly `block_size`, packed across texts (no padding), as the
    whole-data path packs them; the tokens waiting for the next block are carried in the stream's state.
    With ``packing=False`` each text becomes one block cut to `block_size`."""

    def __init__(self, tokenizer, block_size: int, add_special_tokens: bool, append_eos: bool, column: str = "text",
                 packing: bool = True):
        self.tokenizer, self.block_size, self.column, self.packing = tokenizer, block_size, column, packing
        self.add_special_tokens, self.append_eos = add_special_tokens, append_eos
        self.carry: list[int] = []
        # a fast tokenizer's own backend without the transformers wrapper (a quarter less loader CPU, the same
        # ids) where it neither truncates nor pads by itself
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend if backend is not None and backend.truncation is None and backend.padding is None else None

    def _encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=self.add_special_tokens).ids
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens, return_attention_mask=False)["input_ids"]

    def __call__(self, record: Record) -> list[Any]:
        text = record_text(record, self.column)
        if text is None:
            raise Skip(f"no text column {self.column!r}" if record.get(self.column) is None
                       else f"{self.column!r} is not text")
        if not text.strip():
            return []
        ids = self._encode(text)
        eos = self.tokenizer.eos_token_id
        if self.append_eos and eos is not None:
            ids = ids + [eos]
        if not self.packing:
            return [{"input_ids": torch.tensor(ids[: self.block_size], dtype=torch.long)}] if ids else []
        self.carry.extend(ids)
        blocks = []
        while len(self.carry) >= self.block_size:
            blocks.append({"input_ids": torch.tensor(self.carry[: self.block_size], dtype=torch.long)})
            del self.carry[: self.block_size]
        return blocks

    def state_dict(self) -> dict[str, Any]:
        return {"carry": list(self.carry)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.carry = list(state.get("carry", []))


def collate_images(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack streamed images (and concatenate their caption tokens, with each image's caption count)."""
    out: dict[str, Any] = {"image": torch.stack([r["image"] for r in rows]), "id": torch.stack([r["id"] for r in rows])}
    if "tokens" in rows[0]:
        out["tokens"] = torch.cat([r["tokens"] for r in rows])
        out["count"] = torch.tensor([r["count"] for r in rows], dtype=torch.long)
    return out
