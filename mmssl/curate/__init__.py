"""`mmssl curate`: filter and deduplicate image-text, image and text data before training (see
docs/data/curate.md)."""

from mmssl.curate.config import CurateConfig, load_curate_config, parse_curate_config
from mmssl.curate.run import REPORT, curate

__all__ = ["CurateConfig", "REPORT", "curate", "load_curate_config", "parse_curate_config"]
