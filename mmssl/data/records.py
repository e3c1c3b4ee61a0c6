"""The fields of a raw record (a WebDataset sample, a table row, an image file, a Hub row) that objectives and
curate filters read: its image, its captions and its text, wherever the source keeps them."""

from __future__ import annotations

import os
from typing import Any

from mmssl.data.captions import clean_captions
from mmssl.data.shards import Record, image_bytes, json_member
from mmssl.errors import DataError

CAPTION_MEMBERS = ("txt", "text", "caption", "captions")


def record_image(record: Record, mapping: dict[str, str]) -> Any:
    """A record's image: a named column, a WebDataset image member, or a path relative to its table."""
    value = record.get(mapping["image"]) if "image" in mapping else image_bytes(record)
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str) and not os.path.isabs(value) and "__shard__" in record:
        value = os.path.join(os.path.dirname(record["__shard__"]), value)
    return value


def record_text(record: Record, column: str) -> str | None:
    """A record's text in `column` (a WebDataset member's bytes read as UTF-8), or None when it has none."""
    value = record.get(column)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def record_captions(record: Record, mapping: dict[str, str]) -> list[str]:
    """A record's non-empty captions: a text member (``.txt``), a ``captions``/``caption``/``text`` column (a
    string or a list), or the same keys inside a ``.json`` member."""
    if "captions" in mapping:
        value = record.get(mapping["captions"])
    else:
        meta = json_member(record)
        value = meta.get("captions")  # every caption (mmssl prepare writes them there)
        for name in CAPTION_MEMBERS:
            if value is None and name in record:
                value = record[name]
        if value is None and meta:
            value = meta  # a "caption"/"text" inside the json member
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    try:
        return clean_captions(value)
    except DataError:
        return []
