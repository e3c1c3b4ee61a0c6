"""Pixels: image sources (paths, bytes, ``{"bytes"|"path"}`` records, PIL images) decoded once into one
uint8 tensor ``[N, 3, S, S]``, plus counts of the images that could not be used.

Every image is converted to RGB (palette, alpha over white, 16-bit, grayscale, CMYK), resized on its shorter
side (bicubic) and centre-cropped to ``S`` exactly as open_clip's evaluation preprocessing does. An image
that is missing, empty, truncated or not decodable is skipped and counted, never a crash. The tensor lives in
memory or in a memory-mapped scratch file whose name is unlinked at once (`decode_images`).
"""

from __future__ import annotations

import io
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from mmssl.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
STORE_AUTO_BYTES = 2 << 30  # store="auto" keeps decoded images on disk above this size


class BadImage(Exception):
    """An image that cannot be used; the message says why."""


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
        except (OSError, SyntaxError, ValueError) as exc:  # without PIL's "<_io.BytesIO object at 0x...>"
            raise BadImage(f"unreadable ({re.sub(r' <[^<>]* at 0x[0-9a-fA-F]+>', '', str(exc))})") from None
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


def decode(source: Any, size: int) -> torch.Tensor:
    """One image source -> uint8 [3, size, size]; raises `BadImage`."""
    return resize_center_crop(open_image(source), size)


@dataclass
class DecodedImages:
    """The usable images of a list of sources, in order; ``kept[i]`` is the source index of ``images[i]``."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    kept: list[int]
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(self.skipped_reasons.values())


def decode_images(
    sources: Sequence[Any],
    size: int,
    where: str = "data",
    drop: Sequence[str | None] | None = None,
    what: str = "images",
    workers: int | None = None,
    store: Path | None = None,
) -> DecodedImages:
    """Decode `sources`, skipping and counting the bad ones (by reason, with up to 20 examples).

    `drop[i]`, when given and not None, is the caller's own reason to skip source ``i`` whose image is fine
    (e.g. "no caption"). Images are decoded in chunks straight into one uint8 array: in memory, or with
    `store` (a file path) in a memory-mapped file whose name is unlinked at once, so the OS pages images in
    and out as training reads them and the file disappears with the process (even a killed one). No usable
    image at all is a `DataError` naming `where` and `what` ("no usable <what>").
    """
    reasons: dict[str, int] = {}
    examples: list[str] = []

    def skip(reason: str, source: Any) -> None:
        key = reason.split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
        if len(examples) < 20:
            name = source if isinstance(source, (str, os.PathLike)) else (
                source.get("path") if isinstance(source, dict) else None)
            examples.append(f"{name or '<in-memory image>'}: {reason}")

    def work(source: Any) -> tuple[torch.Tensor | None, str | None]:
        try:
            return decode(source, size), None
        except BadImage as exc:
            return None, str(exc)

    shape = (max(len(sources), 1), 3, size, size)
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        images = torch.from_numpy(np.lib.format.open_memmap(store, mode="w+", dtype=np.uint8, shape=shape))
        store.unlink()  # the mapping lives on; nothing is left behind
    else:
        images = torch.empty(shape, dtype=torch.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(sources) > 64 else None
    kept: list[int] = []
    try:
        for start in range(0, len(sources), 4096):
            part = sources[start:start + 4096]
            decoded = list(pool.map(work, part, chunksize=64)) if pool else [work(s) for s in part]
            for i, (source, (tensor, error)) in enumerate(zip(part, decoded), start):
                if tensor is None:
                    skip(error or "unreadable", source)
                    continue
                if drop is not None and drop[i] is not None:
                    skip(drop[i], source)
                    continue
                images[len(kept)] = tensor
                kept.append(i)
    finally:
        if pool is not None:
            pool.shutdown()
    skipped = sum(reasons.values())
    if skipped:
        log.warning("%s: skipped %d of %d examples (%s); e.g. %s", where, skipped, len(sources),
                    ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())), "; ".join(examples[:3]))
    if not kept:
        detail = f" (all {len(sources)} skipped: {reasons}; e.g. {examples[:3]})" if len(sources) else ""
        raise DataError(f"{where}: no usable {what}{detail}")
    n = len(kept)
    images = images[:n] if store is not None or n == len(sources) else images[:n].clone()
    return DecodedImages(images, kept, reasons, examples)


def store_files(store: str, store_dir: Path | None, count: int, size: int,
                where: str) -> tuple[Path | None, Path | None]:
    """Scratch files for the decoded train and eval images, or ``(None, None)`` to keep them in memory.
    ``store``: ``memory``, ``disk`` (files in `store_dir`) or ``auto`` (disk above 2 GiB of pixels)."""
    decoded_bytes = count * 3 * size * size
    on_disk = store == "disk" or (store == "auto" and decoded_bytes > STORE_AUTO_BYTES)
    if on_disk and store_dir is None:
        raise ValueError("store_dir is needed to keep decoded images on disk")
    log.info("%s: %d images, %.2f GB decoded, kept %s", where, count, decoded_bytes / 1e9,
             f"on disk in {store_dir}" if on_disk else "in memory")
    if not on_disk:
        return None, None
    name = f"rank{os.environ.get('RANK', '0')}-{os.getpid()}.npy"
    return Path(store_dir) / f".images-train-{name}", Path(store_dir) / f".images-eval-{name}"
