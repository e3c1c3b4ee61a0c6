"""Quality controls for (source, view) pairs: drop failed, identical (normalised) and duplicate views, and
optionally views whose embedding cosine similarity to the source, under a SentenceTransformer encoder,
lies outside [min_similarity, max_similarity] (too far: meaning lost; too close: nothing to learn)."""

from __future__ import annotations

from collections import Counter

from mmssl.data.text_views.base import normalise
from mmssl.errors import MmsslError

REASONS = ("failed", "identical", "duplicate", "too_dissimilar", "too_similar")


class QualityFilter:
    def __init__(self, drop_identical: bool = True, encoder: str | None = None, min_similarity: float | None = None,
                 max_similarity: float | None = None, batch_size: int = 64, device: str = "auto") -> None:
        self.drop_identical = drop_identical
        self.min_similarity, self.max_similarity = min_similarity, max_similarity
        self.batch_size = batch_size
        self.model = None
        self.encoder = encoder
        if (min_similarity is not None or max_similarity is not None) and not encoder:
            raise MmsslError("quality.min_similarity/max_similarity need quality.encoder (a SentenceTransformer "
                             "folder or Hub id)")
        if encoder:
            from sentence_transformers import SentenceTransformer

            from mmssl.data.text_views.backtranslation import resolve_device

            from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

            refuse_prompts()
            try:
                self.model = SentenceTransformer(encoder, device=resolve_device(device), trust_remote_code=False)
            except Exception as exc:
                if is_custom_code_error(exc):
                    raise custom_code_error("quality.encoder", encoder, None) from None
                raise MmsslError(f"quality.encoder {encoder!r}: could not load it as a SentenceTransformer "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None

    def similarities(self, anchors: list[str], views: list[str]) -> list[float]:
        texts = list(dict.fromkeys(anchors + views))
        embeddings = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                       normalize_embeddings=True, show_progress_bar=False)
        where = {t: i for i, t in enumerate(texts)}
        a = embeddings[[where[t] for t in anchors]]
        v = embeddings[[where[t] for t in views]]
        return (a * v).sum(-1).float().cpu().tolist()

    def reasons(self, anchors: list[str], views: list[str | None],
                seen: set[tuple[str, str]] | None = None) -> tuple[list[str | None], list[float | None]]:
        """Per pair: None (keep) or the reason to drop it; and the similarity where an encoder is set."""
        seen = set() if seen is None else seen
        reasons: list[str | None] = []
        for anchor, view in zip(anchors, views):
            if view is None or not view.strip():
                reasons.append("failed")
                continue
            key = (normalise(anchor), normalise(view))
            if self.drop_identical and key[0] == key[1]:
                reasons.append("identical")
            elif key in seen:
                reasons.append("duplicate")
            else:
                seen.add(key)
                reasons.append(None)
        similarity: list[float | None] = [None] * len(anchors)
        if self.model is not None:
            keep = [i for i, r in enumerate(reasons) if r is None]
            if keep:
                values = self.similarities([anchors[i] for i in keep], [views[i] for i in keep])  # type: ignore[misc]
                for i, value in zip(keep, values):
                    similarity[i] = value
                    if self.min_similarity is not None and value < self.min_similarity:
                        reasons[i] = "too_dissimilar"
                    elif self.max_similarity is not None and value > self.max_similarity:
                        reasons[i] = "too_similar"
        return reasons, similarity


def count_reasons(reasons: list[str | None]) -> dict[str, int]:
    counts = Counter(r for r in reasons if r is not None)
    return {r: counts.get(r, 0) for r in REASONS}
