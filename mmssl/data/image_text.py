"""Image-caption data for CLIP: rows from any image source (`mmssl.data.image_sources`: the built-in world,
jsonl/csv/parquet tables of image paths and captions, image folders with a ``metadata.jsonl``/``metadata.csv``
of captions or class subfolders, WebDataset tar shards, Hub datasets), decoded once into one uint8 tensor
(`mmssl.data.images`).

Training views are cut from that tensor in batches (`mmssl.data.image_views`). An image that is missing,
empty, truncated or not decodable is skipped and counted (``ImageTextTable.skipped``), never a crash; so is
an image without a caption.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from mmssl.data.captions import clean_captions
from mmssl.data.image_sources import Row, label_index, split_rows
from mmssl.data.images import decode_images, store_files
from mmssl.config import DataConfig

__all__ = ["ImageTextTable", "ImageTextSplits", "build_table", "load_image_text"]


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


@dataclass
class ImageTextSplits:
    train: ImageTextTable
    eval: ImageTextTable | None
    class_names: list[str] | None


def build_table(
    rows: Iterable[Row],
    size: int,
    class_index: dict[str, int] | None = None,
    where: str = "data",
    workers: int | None = None,
    store: Path | None = None,
) -> ImageTextTable:
    """Decode ``(image source, captions, label, zero_shot)`` rows; skip and count bad images and rows without
    a caption (see `mmssl.data.images.decode_images` for `store`)."""
    rows = list(rows)
    captions = [clean_captions(row[1]) for row in rows]
    decoded = decode_images([row[0] for row in rows], size, where, drop=[None if c else "no caption" for c in captions],
                            what="image-caption examples", workers=workers, store=store)
    kept = decoded.kept
    return ImageTextTable(
        images=decoded.images,
        captions=[captions[i] for i in kept],
        labels=torch.tensor([label_index(rows[i][2], class_index, where) for i in kept], dtype=torch.long),
        zero_shot=torch.tensor([bool(rows[i][3]) for i in kept], dtype=torch.bool),
        skipped=decoded.skipped,
        skipped_reasons=decoded.skipped_reasons,
        skipped_examples=decoded.skipped_examples,
    )


def load_image_text(cfg: DataConfig, size: int, seed: int = 0, class_names: list[str] | None = None,
                    store: str = "memory", store_dir: Path | None = None) -> ImageTextSplits:
    """Load, decode and split image-caption data; ``class_names`` (from the recipe) override the data's.
    ``store``: decoded images in ``memory``, on ``disk`` (memory-mapped files in `store_dir`, see
    `mmssl.data.images.decode_images`), or ``auto`` (disk when they would take more than 2 GiB)."""
    split = split_rows(cfg, seed, class_names, captions=True)
    stores = store_files(store, store_dir, len(split.train) + len(split.eval or []), size, split.where)
    train = build_table(split.train, size, split.class_index, split.where, store=stores[0])
    evaluation = (build_table(split.eval, size, split.class_index, f"{split.where} (eval)", store=stores[1])
                  if split.eval else None)
    return ImageTextSplits(train, evaluation, split.class_names)


def streamed_eval_table(cfg: DataConfig, size: int, seed: int = 0,
                        class_names: list[str] | None = None) -> tuple[ImageTextTable | None, list[str] | None]:
    """The eval table of a run that streams its training pairs: the built-in world's eval split, or
    ``data.eval_path`` read whole, or none (with the class names the recipe gives)."""
    import dataclasses

    if cfg.source == "world":
        split = split_rows(dataclasses.replace(cfg, streaming=False), seed, class_names, captions=True)
        return build_table(split.eval or [], size, split.class_index, f"{split.where} (eval)"), split.class_names
    if not cfg.eval_path:
        return None, class_names
    held = dataclasses.replace(cfg, path=cfg.eval_path, eval_path=None, eval_fraction=0.0, max_examples=None,
                               weights=None, streaming=False, format="auto" if "::" in (cfg.path or "") else cfg.format,
                               split=cfg.eval_path if cfg.source == "hub" else cfg.split)
    split = split_rows(held, seed, class_names, captions=True)
    return build_table(split.train, size, split.class_index, f"data.eval_path {cfg.eval_path!r}"), split.class_names
