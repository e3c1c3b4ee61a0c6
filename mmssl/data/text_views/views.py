"""Build views from configuration, and `TextViews`, the on-the-fly transform (list[str] -> list[str])."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

from mmssl.data.text_views.base import View, example_rng
from mmssl.data.text_views.cache import NoCache, TranslationCache
from mmssl.data.text_views.config import LEXICAL, CacheConfig, ViewConfig, default_cache_path
from mmssl.schema import from_dict


def open_cache(cfg: CacheConfig | None) -> TranslationCache | NoCache:
    if cfg is None or not cfg.enabled:
        return NoCache()
    return TranslationCache(cfg.path or default_cache_path())


def build_views(cfg: ViewConfig, seed: int = 0, cache: TranslationCache | NoCache | None = None) -> list[View]:
    """The views one config entry makes (a back-translation entry makes one view per pivot)."""
    name = cfg.label
    if cfg.type in ("synonym", "insert"):
        from mmssl.data.text_views.lexical import RandomInsert, SynonymReplace

        kind = SynonymReplace if cfg.type == "synonym" else RandomInsert
        return [kind(name=name, seed=seed, p=cfg.p, min_edits=cfg.min_edits, max_edits=cfg.max_edits,
                     wordnet_dir=cfg.wordnet_dir, max_senses=cfg.max_senses)]
    if cfg.type in LEXICAL:
        from mmssl.data.text_views.lexical import nlpaug_view

        return [nlpaug_view(cfg.type, name=name, seed=seed, p=cfg.p, min_edits=cfg.min_edits,
                            max_edits=cfg.max_edits, char_p=cfg.char_p)]
    if cfg.type == "mask":
        from mmssl.data.text_views.masking import build_mask_view

        return [build_mask_view(cfg, name=name, seed=seed)]
    if cfg.type == "counterfactual":
        from mmssl.data.text_views.counterfactual import build_counterfactual_view

        return [build_counterfactual_view(cfg, name=name, seed=seed)]
    if cfg.type == "contextual":
        from mmssl.data.text_views.lexical import ContextualSubstitute

        return [ContextualSubstitute(cfg.model, name=name, seed=seed, p=cfg.p, top_k=cfg.top_k, device=cfg.device,
                                     min_edits=cfg.min_edits, max_edits=cfg.max_edits)]
    from mmssl.data.text_views.backtranslation import (
        ApertiumTranslator, BackTranslation, Seq2SeqTranslator)

    views: list[View] = []
    for pivot in cfg.pivots:
        if cfg.backend == "apertium":
            forward_mode = pivot.forward
            backward_mode = pivot.backward or "-".join(reversed(forward_mode.split("-")[:2]))
            forward = ApertiumTranslator(forward_mode, cache)
            backward = ApertiumTranslator(backward_mode, cache)
            label = pivot.name or forward_mode.split("-")[-1]
            info = {"backend": "apertium", "forward": forward_mode, "backward": backward_mode}
        else:
            forward = Seq2SeqTranslator(pivot.forward, pivot.source_lang, pivot.pivot_lang, cfg.device,
                                        cfg.generation, cache, seed)
            backward = Seq2SeqTranslator(pivot.backward, pivot.pivot_lang, pivot.source_lang, cfg.device,
                                         cfg.generation, cache, seed)
            label = pivot.name or pivot.pivot_lang or f"pivot{len(views)}"
            info = {"backend": "transformers", "forward": pivot.forward, "backward": pivot.backward,
                    "source_lang": pivot.source_lang, "pivot_lang": pivot.pivot_lang,
                    "generation": asdict(cfg.generation)}
        full = name if len(cfg.pivots) == 1 else f"{name}/{label}"
        views.append(BackTranslation(forward, backward, name=full, seed=seed, info=info))
    return views


class TextViews:
    """On-the-fly positives: ``TextViews([...])(texts, indices, epoch) -> list[str]``.

    Each example gets one view, chosen at random from `views`, seeded from (seed, epoch, index); the
    edits themselves are seeded the same way, so the result is a function of (seed, epoch, index, text)
    whatever the batch. Where a view cannot change a text (no synonym, empty translation), the text itself
    is returned (a dropout view, as in unsupervised SimCSE). `views` may be View objects or config dicts
    (``{"type": "synonym", "p": 0.1}``). Back-translations go through the cache (`cache`: a CacheConfig or
    dict; off by default for on-the-fly use).
    """

    def __init__(self, views: Sequence[View | ViewConfig | dict[str, Any]], seed: int = 0,
                 cache: CacheConfig | dict | None = None) -> None:
        cache_cfg = from_dict(CacheConfig, cache, "cache") if isinstance(cache, dict) else cache
        self.cache = open_cache(cache_cfg) if cache_cfg is not None else NoCache()
        self.seed = seed
        self.views: list[View] = []
        for i, view in enumerate(views):
            if isinstance(view, View):
                self.views.append(view)
                continue
            cfg = from_dict(ViewConfig, view, f"views[{i}]") if isinstance(view, dict) else view
            self.views += build_views(cfg, seed, self.cache)
        if not self.views:
            raise ValueError("TextViews needs at least one view")

    def __call__(self, texts: Sequence[str], indices: Sequence[int] | None = None, epoch: int = 0) -> list[str]:
        texts = list(texts)
        indices = list(range(len(texts))) if indices is None else list(indices)
        if len(indices) != len(texts):
            raise ValueError("TextViews: indices must have one entry per text")
        groups: dict[int, list[int]] = {}
        for position, index in enumerate(indices):
            choice = example_rng(self.seed, f"choose/{epoch}", index).randrange(len(self.views))
            groups.setdefault(choice, []).append(position)
        out = list(texts)
        for choice, positions in groups.items():
            keyed = [indices[p] + epoch * (1 << 40) for p in positions]  # another epoch, other edits
            results = self.views[choice].apply([texts[p] for p in positions], keyed)
            for p, result in zip(positions, results):
                if result and result.strip():
                    out[p] = result
        return out

    def describe(self) -> list[dict]:
        return [v.describe() for v in self.views]
