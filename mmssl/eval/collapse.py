"""Representation-collapse checks on a batch of embeddings.

* ``feature_std``: the std over rows of each dimension of the L2-normalised embeddings, averaged over
  dimensions (Chen & He 2021, "Exploring Simple Siamese Representation Learning", Fig. 2). Complete
  collapse (every row the same vector) gives 0; rows spread isotropically give about ``1 / sqrt(d)``.
* ``feature_std_sqrt_d`` = ``feature_std * sqrt(d)``: the same on a scale where isotropic is about 1 for
  any width. It is at most ``sqrt(1 - ||mean row||^2)``, the square root of the rows' total variance, so
  it measures how far the rows spread around their mean direction, not in how many dimensions: rows in
  a random 2-D subspace still give about 0.9. Dimensional collapse shows in ``effective_rank`` instead.
* ``effective_rank`` and ``uniformity`` (:mod:`mmssl.eval.embeddings`): on at most `max_samples` rows
  (a seeded subset, default 2,048: uniformity is quadratic in rows, the SVD cubic), so the effective
  rank is at most `max_samples`; ``alignment`` (all rows) when a second view is given.

:func:`is_collapsed` flags ``feature_std_sqrt_d < 0.1`` (a tenth of the isotropic value): the rows'
total variance is below 0.01, i.e. they all lie within a few degrees of one direction, or their variance
sits in a handful of coordinates. Healthy encoders sit far above it (SimSiam with stop-gradient stays
near 1; non-negative post-ReLU features with a shared mean give about 0.8) and collapsing ones fall far
below it (SimSiam without stop-gradient drops to 0 within an epoch). Non-finite features count as
collapsed, and their metrics are NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.eval.embeddings import alignment, effective_rank, uniformity

COLLAPSE_THRESHOLD = 0.1


@torch.no_grad()
def collapse_metrics(
    features: Tensor, other_view: Tensor | None = None, max_samples: int | None = 2048, seed: int = 0
) -> dict[str, float]:
    """Collapse metrics of [N, D] `features` (see the module docstring); `other_view` is [N, D] positives.

    Returns ``feature_std``, ``feature_std_sqrt_d``, ``effective_rank``, ``uniformity``, ``alignment``
    (only with `other_view`) and ``num_rows``. Needs N >= 2.
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"collapse_metrics needs [N >= 2, D] features, got {tuple(features.shape)}")
    if other_view is not None and other_view.shape != features.shape:
        raise ValueError(f"other_view has shape {tuple(other_view.shape)}, features {tuple(features.shape)}")
    z = F.normalize(features.detach().float(), dim=-1)
    if not torch.isfinite(z).all():
        nan = float("nan")
        out = {key: nan for key in ("feature_std", "feature_std_sqrt_d", "effective_rank", "uniformity")}
        return out | ({"alignment": nan} if other_view is not None else {}) | {"num_rows": float(len(z))}
    std = z.std(dim=0, correction=0).mean().item()
    sample = z
    if max_samples is not None and len(z) > max_samples:
        pick = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:max_samples]
        sample = z[pick.to(z.device)]
    out = {
        "feature_std": std,
        "feature_std_sqrt_d": std * math.sqrt(z.shape[1]),
        "effective_rank": effective_rank(sample),
        "uniformity": uniformity(sample),
    }
    if other_view is not None:
        out["alignment"] = alignment(features.detach(), other_view.detach())
    out["num_rows"] = float(len(z))
    return out


def is_collapsed(metrics: dict[str, float], threshold: float = COLLAPSE_THRESHOLD) -> bool:
    """True when ``metrics["feature_std_sqrt_d"]`` is below `threshold` or not finite (NaN/inf features)."""
    value = metrics["feature_std_sqrt_d"]
    return not math.isfinite(value) or value < threshold
