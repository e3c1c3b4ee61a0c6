"""The InfoNCE family of contrastive losses, shared by SimCSE, retrieval training and CLIP.

One implementation, :func:`info_nce`, covers

* in-batch negatives (SimCSE, Gao et al. 2021; multiple-negatives ranking loss),
* keys gathered from all processes (``label_offset = rank * B``, the "local loss" of open_clip),
* extra negatives appended as columns (mined hard negatives, a MoCo queue, He et al. 2020),
* the symmetric image<->text loss of CLIP (Radford et al. 2021), also with gathered features,
* false-negative masking (duplicates in a batch) and multiple positives per query.

Besides it: pairwise margin losses (Hadsell et al. 2006; Schroff et al. 2015) and the
InfoNCE mutual-information bound (Oord et al. 2018).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.losses.hard_negatives import NegativeShaping, mochi_logits, reweighted_loss

__all__ = [
    "info_nce",
    "LearnableTemperature",
    "duplicate_mask",
    "text_ids",
    "contrastive_margin_loss",
    "triplet_loss",
    "mutual_information_lower_bound",
    "pairwise_distance",
]

Reduction = Literal["mean", "sum", "none"]
Distance = Literal["cosine", "euclidean", "squared_euclidean"]


# --------------------------------------------------------------------------------------
# temperature
# --------------------------------------------------------------------------------------


class LearnableTemperature(nn.Module):
    """A learnable softmax temperature stored as ``log(1/T)`` (CLIP, Radford et al. 2021).

    ``forward()`` returns the *logit scale* ``s = exp(log(1/T))`` clamped to
    ``max_logit_scale`` (CLIP: 100), i.e. logits are ``s * cos``. The clamp is applied in the
    forward pass (no gradient beyond the cap); :meth:`clamp_` additionally clamps the stored
    parameter in place, as open_clip does after each optimiser step.
    """

    def __init__(self, init: float = 0.07, max_logit_scale: float = 100.0, learnable: bool = True) -> None:
        super().__init__()
        _check_temperature(init)
        if max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be > 0, got {max_logit_scale}")
        if 1.0 / init > max_logit_scale:
            raise ValueError(
                f"initial temperature {init} gives logit scale {1.0 / init:.4g} above "
                f"max_logit_scale={max_logit_scale}: raise max_logit_scale or the temperature"
            )
        self.max_logit_scale = float(max_logit_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)), requires_grad=learnable)

    def forward(self) -> Tensor:
        return self.log_scale.exp().clamp(max=self.max_logit_scale)

    @property
    def temperature(self) -> float:
        """The current (clamped) temperature ``T = 1 / scale`` as a Python float."""
        return float(1.0 / self.forward().detach())

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the parameter in place to ``[0, log(max_logit_scale)]`` (scale in ``[1, max]``)."""
        self.log_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}, max_logit_scale={self.max_logit_scale}"


def _check_temperature(t: float | Tensor) -> None:
    if isinstance(t, Tensor):
        # Only inspect CPU values: a device->host sync per step is not worth it on accelerators.
        if t.device.type == "cpu" and not bool((t.detach() > 0).all()):
            raise ValueError(f"temperature must be > 0, got {t.detach().tolist()}; typical values are 0.01-0.1")
        return
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        raise ValueError(f"temperature must be a positive float or a tensor, got {type(t).__name__}")
    if not t > 0 or math.isinf(t):
        raise ValueError(f"temperature must be a finite number > 0, got {t}; typical values are 0.01-0.1")


def _scale(temperature: float | Tensor, logit_scale: Tensor | float | None) -> float | Tensor:
    if logit_scale is not None:
        if isinstance(logit_scale, (int, float)) and not logit_scale > 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        return logit_scale
    _check_temperature(temperature)
    return 1.0 / temperature


# --------------------------------------------------------------------------------------
# InfoNCE
# --------------------------------------------------------------------------------------


def _check_2d(name: str, x: Tensor, dim: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor [rows, dim], got {shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(
            f"{name} has embedding dim {x.shape[1]} but queries have {dim}: all embeddings must share one dim"
        )


def _check_mask(name: str, mask: Tensor | None, shape: tuple[int, int]) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"{name} must have shape [queries, keys (+ extra negatives)] = {list(shape)}, got {list(got)}"
        )
    return mask.bool()


def _directional_loss(
    rows: Tensor,
    cols: Tensor,
    scale: float | Tensor,
    label_offset: int,
    positive_mask: Tensor | None,
    false_negative_mask: Tensor | None,
    shaping: NegativeShaping | None = None,
) -> Tensor:
    """Per-row InfoNCE of ``rows`` [B, D] against ``cols`` [N, D]; returns [B]."""
    logits = (rows @ cols.T) * scale
    if logits.dtype in (torch.float16, torch.bfloat16):  # softmax in fp32 under mixed precision
        logits = logits.float()
    b, n = logits.shape
    labels = torch.arange(b, device=logits.device) + label_offset
    shaped = shaping is not None and shaping.active
    if positive_mask is None:
        pos = None
        if false_negative_mask is not None or shaped:
            pos = torch.zeros(b, n, dtype=torch.bool, device=logits.device)
            pos[torch.arange(b, device=logits.device), labels] = True
    else:
        pos = positive_mask.to(logits.device)
        if not bool(pos.any(dim=1).all()):
            raise ValueError("positive_mask has a row without any positive: every query needs at least one True")
    not_negative = pos
    if false_negative_mask is not None:
        # Positives are never removed from the denominator.
        drop = false_negative_mask.to(logits.device) & ~pos
        logits = logits.masked_fill(drop, float("-inf"))
        not_negative = pos | drop
    if shaped:
        assert shaping is not None and not_negative is not None
        if shaping.mixes:
            synthetic = mochi_logits(rows, cols, logits, not_negative, scale, shaping)
            logits = torch.cat([logits, synthetic], dim=1)
            not_negative = torch.cat([not_negative, not_negative.new_zeros(synthetic.shape)], dim=1)
            if positive_mask is not None:
                pos = torch.cat([pos, pos.new_zeros(synthetic.shape)], dim=1)
        if shaping.reweights:
            if positive_mask is not None:
                raise ValueError("the debiased / hardness-weighted loss takes one positive per query, not a "
                                 "positive_mask")
            return reweighted_loss(logits, labels, ~not_negative, scale, shaping)
    if positive_mask is None:
        return F.cross_entropy(logits, labels, reduction="none")
    # Several positives: average log-probability of the positives (SupCon "L_out", Khosla et al. 2020).
    logp = torch.log_softmax(logits, dim=1).masked_fill(~pos, 0.0)
    return -logp.sum(dim=1) / pos.sum(dim=1)


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def info_nce(
    queries: Tensor,
    keys: Tensor,
    *,
    temperature: float | Tensor = 0.05,
    logit_scale: Tensor | float | None = None,
    extra_negatives: Tensor | None = None,
    symmetric: bool = False,
    all_queries: Tensor | None = None,
    positive_mask: Tensor | None = None,
    false_negative_mask: Tensor | None = None,
    normalize: bool = True,
    label_offset: int = 0,
    reduction: Reduction = "mean",
    shaping: NegativeShaping | None = None,
) -> Tensor:
    r"""InfoNCE / NT-Xent (Oord et al. 2018; SimCSE, Gao et al. 2021; CLIP, Radford et al. 2021).

    With :math:`s = 1/T` (or ``logit_scale``), :math:`q_i` the queries, :math:`k_j` the columns
    ``cat(keys, extra_negatives)`` and the positive of query ``i`` at column ``p(i) = label_offset + i``:

    .. math:: \ell_i = -\log \frac{\exp(s\, q_i\cdot k_{p(i)})}{\sum_{j \notin FN_i} \exp(s\, q_i \cdot k_j)}

    and the loss is the mean over the ``B`` local queries.

    Args:
        queries: [B, D] local queries (anchors / images).
        keys: [M, D] keys; ``keys[label_offset + i]`` is the positive of ``queries[i]``. ``keys`` may be
            the keys gathered from all processes (:func:`mmssl.distributed.gather_with_grad`) with
            ``label_offset = rank * B``; every other row is an in-batch negative.
        temperature: softmax temperature ``T > 0`` (float or tensor). Ignored if ``logit_scale`` is given.
        logit_scale: multiply the similarities by this instead of ``1/temperature`` (the output of
            :class:`LearnableTemperature`).
        extra_negatives: [K, D] further negative columns (flattened mined hard negatives, a MoCo queue).
        symmetric: also compute the reverse (key -> query) direction and average both, as CLIP does.
            The reverse rows are the *paired* keys ``keys[label_offset : label_offset + B]`` and the
            reverse columns are ``all_queries`` (default ``queries``), positive at ``label_offset + i``.
            Extra negatives take part only in the forward direction (they are key-side items).
        all_queries: [M, D] the queries of all processes (gathered like ``keys``), the columns of the
            reverse direction. Required when ``symmetric`` and ``keys`` are gathered.
        positive_mask: [B, M+K] bool; if given it *replaces* the implicit positives ``label_offset + i``
            (several positives per row allowed; the row loss is then the mean negative log-probability of
            its positives, SupCon "L_out", Khosla et al. 2020).
        false_negative_mask: [B, M+K] bool; True columns are removed from the denominator (for example
            duplicates of the positive, see :func:`duplicate_mask`). Positives are never removed.
        normalize: L2-normalise all embeddings first (cosine similarity).
        label_offset: column of the first local positive (``rank * B`` for gathered keys).
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (per query; [B], or [2B] forward rows then
            reverse rows when symmetric).
        shaping: MoCHi's synthetic hard negatives, the debiased loss and hardness weighting
            (:class:`mmssl.losses.hard_negatives.NegativeShaping`), in both directions when symmetric; None
            or all options 0: the plain loss.

    For the symmetric direction the masks are reused sliced to the first ``M`` columns, which is right
    when they describe a symmetric relation between *pairs* (duplicates, same class) as those of
    :func:`duplicate_mask` do.

    Returns:
        The loss (a scalar unless ``reduction='none'``).
    """
    _check_2d("queries", queries)
    dim = queries.shape[1]
    _check_2d("keys", keys, dim)
    b, m = queries.shape[0], keys.shape[0]
    if b == 0:
        raise ValueError("queries is empty: need at least one query")
    if extra_negatives is not None:
        _check_2d("extra_negatives", extra_negatives, dim)
    k = 0 if extra_negatives is None else extra_negatives.shape[0]
    if not isinstance(label_offset, int) or label_offset < 0 or label_offset + b > m:
        raise ValueError(
            f"label_offset={label_offset} with {b} queries needs keys rows {label_offset}..{label_offset + b - 1}, "
            f"but keys has {m} rows: keys must hold each query's positive (keys[label_offset + i])"
        )
    if m + k < 2:
        raise ValueError("no negatives: use batch_size >= 2 or add negatives (extra_negatives)")
    scale = _scale(temperature, logit_scale)
    positive_mask = _check_mask("positive_mask", positive_mask, (b, m + k))
    false_negative_mask = _check_mask("false_negative_mask", false_negative_mask, (b, m + k))

    if symmetric:
        if all_queries is None:
            if m != b or label_offset != 0:
                raise ValueError(
                    f"symmetric=True with {m} keys for {b} queries (label_offset={label_offset}): the reverse "
                    "direction needs the queries of all processes; pass all_queries (gathered like keys), or "
                    "pass hard negatives as extra_negatives instead of extra keys"
                )
            all_queries = queries
        else:
            _check_2d("all_queries", all_queries, dim)
            if all_queries.shape[0] != m:
                raise ValueError(
                    f"all_queries has {all_queries.shape[0]} rows but keys has {m}: for symmetric=True they must be "
                    "paired 1:1 (both gathered the same way)"
                )
    elif all_queries is not None:
        raise ValueError("all_queries is only used with symmetric=True")

    if normalize:
        queries = F.normalize(queries, dim=-1)
        keys = F.normalize(keys, dim=-1)
        if extra_negatives is not None:
            extra_negatives = F.normalize(extra_negatives, dim=-1)
        if symmetric and all_queries is not None:
            all_queries = F.normalize(all_queries, dim=-1)

    cols = keys if extra_negatives is None else torch.cat([keys, extra_negatives.to(keys.dtype)], dim=0)
    forward = _directional_loss(queries, cols, scale, label_offset, positive_mask, false_negative_mask, shaping)
    if not symmetric:
        return _reduce(forward, reduction)

    assert all_queries is not None
    paired_keys = keys[label_offset : label_offset + b]
    rev_pos = None if positive_mask is None else positive_mask[:, :m]
    rev_fn = None if false_negative_mask is None else false_negative_mask[:, :m]
    reverse = _directional_loss(paired_keys, all_queries, scale, label_offset, rev_pos, rev_fn, shaping)
    if reduction == "none":
        return torch.cat([forward, reverse])
    return (_reduce(forward, reduction) + _reduce(reverse, reduction)) / 2


# --------------------------------------------------------------------------------------
# false negatives
# --------------------------------------------------------------------------------------


def _normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def text_ids(texts: Sequence[str]) -> Tensor:
    """Stable int64 ids of normalised texts (NFKC, casefold, collapsed whitespace) for :func:`duplicate_mask`.

    Uses blake2b, not Python's ``hash`` (salted per process), so ids agree across processes and can be
    gathered like the embeddings.
    """
    ids = [
        int.from_bytes(hashlib.blake2b(_normalise_text(t).encode("utf-8"), digest_size=8).digest(), "little", signed=True)
        for t in texts
    ]
    return torch.tensor(ids, dtype=torch.long)


def duplicate_mask(positive_ids: Tensor, candidate_ids: Tensor, *, label_offset: int = 0) -> Tensor:
    """False-negative mask of columns identical to the positive (duplicate sentences / pairs in a batch).

    Args:
        positive_ids: [B] integer id of each query's positive (e.g. :func:`text_ids` of the positive texts).
        candidate_ids: [M(+K)] id of every column: the keys (gathered if the keys are), then any extra negatives.
        label_offset: column of the first positive, as in :func:`info_nce`.

    Returns:
        [B, M(+K)] bool, True where ``candidate_ids[j] == positive_ids[i]`` except the positive column itself;
        pass it as ``false_negative_mask`` to :func:`info_nce`.
    """
    positive_ids = torch.as_tensor(positive_ids)
    candidate_ids = torch.as_tensor(candidate_ids, device=positive_ids.device)
    if positive_ids.dim() != 1 or candidate_ids.dim() != 1:
        raise ValueError(
            f"positive_ids and candidate_ids must be 1-D, got shapes {list(positive_ids.shape)} and "
            f"{list(candidate_ids.shape)}"
        )
    b, n = positive_ids.shape[0], candidate_ids.shape[0]
    if label_offset < 0 or label_offset + b > n:
        raise ValueError(f"label_offset={label_offset} with {b} positives does not fit {n} candidate columns")
    mask = positive_ids[:, None] == candidate_ids[None, :]
    rows = torch.arange(b, device=mask.device)
    mask[rows, rows + label_offset] = False
    return mask


# --------------------------------------------------------------------------------------
# pairwise margin losses
# --------------------------------------------------------------------------------------


def pairwise_distance(a: Tensor, b: Tensor, distance: Distance = "cosine") -> Tensor:
    """Row-wise distance between ``a`` and ``b`` ([N, D] each): ``1 - cos``, ``||a-b||`` or ``||a-b||^2``."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {list(a.shape)} vs {list(b.shape)}; pairs must have equal shapes")
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=-1)
    if distance == "euclidean":
        return (a - b).norm(dim=-1)
    if distance == "squared_euclidean":
        return (a - b).pow(2).sum(dim=-1)
    raise ValueError(f"distance must be 'cosine', 'euclidean' or 'squared_euclidean', got {distance!r}")


def contrastive_margin_loss(
    a: Tensor,
    b: Tensor,
    label: Tensor,
    margin: float = 0.5,
    distance: Distance = "cosine",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Contrastive (margin) loss of Hadsell, Chopra & LeCun 2006.

    .. math:: \ell = \tfrac12\left[y\, d^2 + (1 - y)\max(0, m - d)^2\right]

    with ``y = 1`` for similar pairs, ``0`` for dissimilar ones, and ``d`` the pair distance.
    """
    d = pairwise_distance(a, b, distance)
    label = torch.as_tensor(label, device=d.device).to(d.dtype)
    if label.shape != d.shape:
        raise ValueError(f"label must have shape {list(d.shape)} (one 0/1 per pair), got {list(label.shape)}")
    loss = 0.5 * (label * d.pow(2) + (1 - label) * F.relu(margin - d).pow(2))
    return _reduce(loss, reduction)


def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 0.2,
    distance: Distance = "cosine",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Triplet loss (FaceNet, Schroff et al. 2015): :math:`\max(0, d(a,p) - d(a,n) + m)`.

    FaceNet uses ``distance='squared_euclidean'`` on normalised embeddings with ``margin=0.2``.
    """
    if anchor.shape != positive.shape or anchor.shape != negative.shape:
        raise ValueError(
            f"anchor, positive and negative must have equal shapes, got {list(anchor.shape)}, "
            f"{list(positive.shape)}, {list(negative.shape)}"
        )
    loss = F.relu(pairwise_distance(anchor, positive, distance) - pairwise_distance(anchor, negative, distance) + margin)
    return _reduce(loss, reduction)


def mutual_information_lower_bound(loss: Tensor | float, num_candidates: int) -> Tensor | float:
    r"""InfoNCE bound on mutual information (Oord et al. 2018): :math:`I(q; k) \ge \log N - \mathcal{L}`.

    ``num_candidates`` is ``N``, the number of columns each query is scored against (positive included).
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    return math.log(num_candidates) - loss
