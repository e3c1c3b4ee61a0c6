"""Text views for contrastive learning: back-translation (transformers seq2seq or Apertium) and lexical
edits (WordNet synonyms and insertion, nlpaug noise, fill-mask substitution), deterministic per example;
`TextViews` for on-the-fly use, `mmssl augment` (mmssl.augment) for offline datasets."""

from mmssl.data.text_views.base import View, normalise
from mmssl.data.text_views.config import AugmentConfig, CacheConfig, PivotConfig, QualityConfig, ViewConfig
from mmssl.data.text_views.views import TextViews, build_views

__all__ = ["AugmentConfig", "CacheConfig", "PivotConfig", "QualityConfig", "TextViews", "View", "ViewConfig",
           "build_views", "normalise"]
