"""The filters that need the whole data before they decide: the CLIP score (a top fraction is a global cut)
and semantic dedup (SemDeDup clusters everything). The first pass hands them the samples the per-sample
filters kept; they embed them in batches, keep one score (4 bytes) and one float16 embedding (on disk, in the
output folder) per sample, and at the end of the pass say which rows they drop; the second pass writes.
"""

from __future__ import annotations

import logging
import math
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from mmssl.curate.config import ClipScore, CurateConfig, SemanticDedup
from mmssl.curate.embed import Encoder

HISTOGRAM_BINS = 40
WARN_SHARE = 0.5  # semantic dedup dropping more than this share of what it saw is named in the report
log = logging.getLogger(__name__)

# row -> (filter, reason, the row it duplicates or None)
Decision = tuple[str, str, "int | None"]


class EmbeddingFilters:
    """Collects batches in the first pass (`add`), then `decide`s."""

    def __init__(self, cfg: CurateConfig, work_file: Path):
        self.clip: ClipScore | None = cfg.filters.clip_score
        self.semantic: SemanticDedup | None = cfg.filters.semantic_dedup
        encoders: dict[tuple[str, str | None, str], Encoder] = {}

        def encoder(model: str, pretrained: str | None, device: str, where: str) -> Encoder:
            key = (model, pretrained, device)
            if key not in encoders:
                encoders[key] = Encoder(model, pretrained, device, where)
            return encoders[key]

        self.clip_encoder = encoder(self.clip.model, self.clip.pretrained, self.clip.device,
                                    "filters.clip_score") if self.clip else None
        self.semantic_encoder = None
        self.by = "text" if cfg.kind == "text" else "image" if cfg.kind == "images" else None
        if self.semantic is not None:
            self.by = self.by or self.semantic.by
            self.semantic_encoder = encoder(self.semantic.model or "", self.semantic.pretrained, self.semantic.device,
                                            "filters.semantic_dedup")
            if self.by == "image" and not self.semantic_encoder.has_images:
                from mmssl.errors import RecipeError

                raise RecipeError("filters.semantic_dedup.model is a text encoder: deduplicating images needs an "
                                  "open_clip model (or set filters.semantic_dedup.by: text)")
        sizes = [f.batch_size for f in (self.clip, self.semantic) if f is not None]
        self.batch_size = min(sizes) if sizes else 256
        self.work_file = work_file
        self._embeddings: Any = None  # the work file, opened at the first batch (the folder exists by then)
        self.dim = 0
        self.rows = array("q")  # the read index of every sample handed in
        self.scores = array("f")
        self._batch: list[tuple[int, Any]] = []
        self.warnings: list[str] = []  # shown in the report

    @property
    def needs_images(self) -> bool:
        return self.clip is not None or (self.semantic is not None and self.by == "image")

    def add(self, row: int, sample: Any) -> None:
        self._batch.append((row, sample))
        if len(self._batch) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        rows, samples = zip(*self._batch)
        self._batch = []
        self.rows.extend(rows)
        images = [s.image for s in samples] if self.needs_images else None
        texts = [s.text or "" for s in samples]
        image_features = text_features = None
        if self.clip_encoder is not None:
            image_features, text_features = self.clip_encoder.images(images), self.clip_encoder.texts(texts)
            self.scores.extend((image_features * text_features).sum(axis=1).astype(np.float32).tolist())
        if self.semantic_encoder is not None:
            shared = self.semantic_encoder is self.clip_encoder
            if self.by == "image":
                features = image_features if shared else self.semantic_encoder.images(images)
            else:
                features = text_features if shared else self.semantic_encoder.texts(texts)
            self.dim = features.shape[1]
            if self._embeddings is None:
                self._embeddings = self.work_file.open("wb")
            self._embeddings.write(np.ascontiguousarray(features, dtype=np.float16).tobytes())

    def decide(self) -> tuple[dict[int, Decision], dict[str, Any]]:
        """The rows these filters drop, and the report's histograms (`warnings` then names anything suspicious)."""
        self._flush()
        if self._embeddings is not None:
            self._embeddings.close()
        rows = np.frombuffer(self.rows, dtype=np.int64) if len(self.rows) else np.zeros(0, dtype=np.int64)
        keep = np.ones(len(rows), dtype=bool)
        decisions: dict[int, Decision] = {}
        histograms: dict[str, Any] = {}
        if self.clip is not None and len(rows):
            scores = np.frombuffer(self.scores, dtype=np.float32)
            cut = self._clip_cut(scores)
            keep = scores >= cut
            rule = (f"< {self.clip.threshold:g} (threshold)" if self.clip.threshold is not None
                    else f"< {cut:.4f} (the cut of the top {self.clip.top_fraction:g})")
            for position in np.flatnonzero(~keep).tolist():
                decisions[int(rows[position])] = ("clip_score", f"CLIP score {scores[position]:.4f} {rule}", None)
            histograms["clip_score"] = _histogram(scores, keep, cut)
        if self.semantic is not None and keep.any() and self.dim:
            embeddings = np.memmap(self.work_file, dtype=np.float16, mode="r", shape=(len(rows), self.dim))
            from mmssl.curate.semantic import duplicates

            candidates = np.flatnonzero(keep)
            nearest = np.empty(len(candidates), dtype=np.float32)
            found = duplicates(embeddings, candidates, self.semantic.threshold, self.semantic.cluster_size,
                               self.semantic.seed, nearest=nearest)
            for position, (other, similarity) in found.items():
                decisions[int(rows[position])] = ("semantic_dedup", f"cosine {similarity:.3f} ({self.by})",
                                                  int(rows[other]))
            del embeddings
            seen = nearest[nearest > -1]  # the first sample of each cluster has no earlier one
            if len(seen):
                histograms["semantic_dedup"] = _histogram(seen, seen < self.semantic.threshold,
                                                          self.semantic.threshold)
            share = len(found) / len(candidates)
            if share > WARN_SHARE:
                self.warnings.append(f"semantic_dedup dropped {share:.0%} of the samples it saw: the embeddings do not "
                                "tell these samples apart (see the histogram of nearest similarities); raise "
                                "filters.semantic_dedup.threshold or embed with another model")
                log.warning(self.warnings[-1])
        self.work_file.unlink(missing_ok=True)
        return decisions, histograms

    def _clip_cut(self, scores: np.ndarray) -> float:
        if self.clip.threshold is not None:  # type: ignore[union-attr]
            return float(self.clip.threshold)  # type: ignore[union-attr]
        count = max(1, math.ceil(self.clip.top_fraction * len(scores)))  # type: ignore[union-attr,operator]
        return float(np.sort(scores)[::-1][count - 1])


def _histogram(scores: np.ndarray, keep: np.ndarray, cut: float) -> dict[str, Any]:
    """Counts of kept and dropped samples per bin of `scores`, with the cut between them."""
    low, high = float(scores.min()), float(scores.max())
    edges = np.linspace(low, high if high > low else low + 1e-6, HISTOGRAM_BINS + 1)
    return {"edges": [round(float(e), 5) for e in edges], "cut": round(cut, 5),
            "kept": np.histogram(scores[keep], edges)[0].tolist(),
            "dropped": np.histogram(scores[~keep], edges)[0].tolist()}
