"""`mmssl curate`: filter and deduplicate image-text, image and text data before training (see
docs/data/curate.md). The names below are imported when first used, so that `mmssl.curate.filters` (which the
training stream's ``data.curate`` uses) does not pull in the curate run and its readers."""

from __future__ import annotations

from typing import Any

__all__ = ["CurateConfig", "REPORT", "curate", "load_curate_config", "parse_curate_config"]


def __getattr__(name: str) -> Any:
    if name in ("CurateConfig", "load_curate_config", "parse_curate_config"):
        from mmssl.curate import config

        return getattr(config, name)
    if name in ("REPORT", "curate"):
        from mmssl.curate import run

        return getattr(run, name)
    raise AttributeError(f"module 'mmssl.curate' has no attribute {name!r}")
