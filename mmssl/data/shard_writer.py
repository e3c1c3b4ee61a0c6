"""Writing samples as shards (WebDataset tars for images, JSON Lines for text), as `mmssl prepare` and
`mmssl curate` write them: numbered shards under temporary names until complete, images as their original
bytes when they decode, the label a sample carries, and a fingerprint of what an output was made from."""

from __future__ import annotations

import glob
import io
import os
import tarfile
from pathlib import Path
from typing import Any

from mmssl.config import DataConfig


def image_payload(source: Any, image_size: int | None) -> tuple[bytes, str]:
    """Encoded image bytes and extension: the original bytes when no resize is asked and they decode, else
    a re-encoded JPEG (PNG for images with transparency). Raises BadImage."""
    from PIL import Image

    from mmssl.data.images import BadImage, open_image

    raw = None
    if isinstance(source, (bytes, bytearray)):
        raw = bytes(source)
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        raw = Path(source).read_bytes()
    image = open_image(raw if raw is not None else source)  # verifies it decodes (RGB, alpha over white)
    if image_size is None and raw is not None:
        fmt = (Image.open(io.BytesIO(raw)).format or "JPEG").lower()
        return raw, {"jpeg": "jpg"}.get(fmt, fmt)
    lossless = image_size is None  # an in-memory image (the world's) is kept exactly
    if image_size is not None and min(image.size) != image_size:
        scale = image_size / min(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    out = io.BytesIO()
    try:
        image.save(out, format="PNG" if lossless else "JPEG", **({} if lossless else {"quality": 92}))
    except OSError as exc:
        raise BadImage(f"cannot encode ({exc})") from None
    return out.getvalue(), "png" if lossless else "jpg"


def sample_label(record: dict, root: str | None, columns: dict[str, str]) -> Any:
    """An image folder's class subfolder, a mapped label column, or the record's own label."""
    from mmssl.data.shards import record_label

    if root is not None and "__path__" in record:
        parent = Path(record["__path__"]).parent
        return None if parent == Path(root) else parent.relative_to(root).as_posix().replace("_", " ")
    if "label" in columns:
        return record.get(columns["label"])
    return record_label(record)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Writes numbered shards of at most `size` samples, each under a temporary name until complete."""

    def __init__(self, out: Path, stem: str, ext: str, size: int):
        self.out, self.stem, self.ext, self.size = out, stem, ext, size
        self.written: dict[str, int] = {}
        self._handle: Any = None
        self._count = 0

    def _open(self) -> None:
        self._name = f"{self.stem}-{len(self.written):04d}{self.ext}"
        self._tmp = self.out / f".tmp-{self._name}"
        self._handle = tarfile.open(self._tmp, "w") if self.ext == ".tar" else open(self._tmp, "w", encoding="utf-8")
        self._count = 0

    def write(self, members: list[tuple[str, bytes]] | str) -> None:
        if self._handle is None:
            self._open()
        if isinstance(members, str):
            self._handle.write(members + "\n")
        else:
            for name, data in members:
                _add(self._handle, name, data)
        self._count += 1
        if self._count == self.size:
            self.close()

    def close(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        os.replace(self._tmp, self.out / self._name)
        self.written[self._name] = self._count
        self._handle = None


def input_fingerprint(data: DataConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """What the output was made from: the settings and every input file's size and modification time."""
    from mmssl.data.shards import expand_braces

    files: dict[str, list[float]] = {}
    if data.source == "files":
        for spec in (data.path or "").split("::"):
            for pattern in expand_braces(os.path.expanduser(spec)):
                base = Path(pattern)
                if base.is_file():
                    found = [base]
                elif base.is_dir():
                    found = sorted(p for p in base.rglob("*") if p.is_file())
                else:
                    found = [Path(p) for p in sorted(glob.glob(pattern))]
                for f in found:
                    stat = f.stat()
                    files[str(f)] = [stat.st_size, stat.st_mtime]
    return {"settings": settings, "inputs": files}
