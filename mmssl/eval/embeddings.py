"""Sentence-embedding evaluation: STS-style Spearman, retrieval, alignment & uniformity, effective rank.

* Alignment and uniformity: Wang & Isola 2020, "Understanding Contrastive Representation Learning
  through Alignment and Uniformity on the Hypersphere" (``alpha = 2``, ``t = 2``, on L2-normalised
  embeddings; lower is better for both).
* Effective rank: Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality":
  ``exp(H(p))`` with ``p_i = s_i / sum(s)`` the normalised singular values of the (uncentred, row
  L2-normalised) embedding matrix; between 1 and ``min(N, D)``.
* STS-style Spearman: the rank correlation between cosine similarity and a gold score per pair.

On the built-in world there is no human-scored STS set, so :func:`scored_pairs_from_triples` builds
one honestly from its structure: (anchor, paraphrase) = 1.0; (anchor, hard negative: the same words
describing another scene) = 0.5; (anchor, the paraphrase of another scene) = 0.0. A good model must
rank paraphrases above near-miss captions above unrelated ones. Data with a ``score`` column is used as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.eval.retrieval import retrieval_metrics

Encode = Callable[[Sequence[str]], Tensor]


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> float:
    """``E ||f(x) - f(y)||^alpha`` over positive pairs (rows of x and y), normalised embeddings."""
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    return (x - y).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: Tensor, t: float = 2.0) -> float:
    """``log E exp(-t ||f(x) - f(y)||^2)`` over all distinct pairs of rows, normalised embeddings."""
    x = F.normalize(x.float(), dim=-1)
    if x.shape[0] < 2:
        return float("nan")
    sq = torch.pdist(x, p=2).pow(2)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())).item()


def effective_rank(x: Tensor, eps: float = 1e-12) -> float:
    """Roy & Vetterli's effective rank of the row-normalised embedding matrix."""
    x = F.normalize(x.float(), dim=-1)
    s = torch.linalg.svdvals(x.double())
    p = s / s.sum().clamp(min=eps)
    p = p[p > eps]
    return float(torch.exp(-(p * p.log()).sum()))


SIMILARITY_BINS = 40  # histogram bins over [-1, 1]


def similarity_histogram(values: Tensor) -> list[int]:
    """Counts of cosine similarities in `SIMILARITY_BINS` equal bins over [-1, 1]."""
    return torch.histc(values.float().clamp(-1, 1), bins=SIMILARITY_BINS, min=-1.0, max=1.0).long().tolist()


def spectrum(x: Tensor, top: int = 64) -> list[float]:
    """The largest singular values of the row-normalised embeddings, scaled to sum to 1 (a collapsed
    representation puts nearly everything in the first few)."""
    s = torch.linalg.svdvals(F.normalize(x.float(), dim=-1).double())
    return (s / s.sum().clamp(min=1e-12))[:top].tolist()


def pair_diagnostics(queries: Tensor, keys: Tensor, all_embeddings: Tensor, max_negatives: int = 200_000) -> dict:
    """What the report draws for a contrastive model: similarity histograms of the positive pairs (row i of
    `queries` with row i of `keys`) and of the negatives (row i with every other row), alignment/uniformity and
    the spectrum. Inputs are L2-normalised."""
    sims = queries @ keys.T
    positive = sims.diagonal()
    off = ~torch.eye(len(sims), dtype=torch.bool, device=sims.device)
    negative = sims[off]
    if negative.numel() > max_negatives:  # a fixed, evenly spaced subset
        negative = negative[torch.linspace(0, negative.numel() - 1, max_negatives).long()]
    return {"positive_similarity": similarity_histogram(positive), "negative_similarity": similarity_histogram(negative),
            "alignment": alignment(queries, keys), "uniformity": uniformity(all_embeddings),
            "spectrum": spectrum(all_embeddings)}


def _ranks(x: Tensor) -> Tensor:
    """Ranks 1..n with ties given their average rank."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    n = len(x)
    i = 0
    values = sorted_x.tolist()
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    while i < n:
        j = i
        while j + 1 < n and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = positions[i : j + 1].mean()
        i = j + 1
    return ranks


def spearman(a: Tensor | Sequence[float], b: Tensor | Sequence[float]) -> float:
    """Spearman rank correlation (ties averaged)."""
    ra, rb = _ranks(torch.as_tensor(a)), _ranks(torch.as_tensor(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else float("nan")


def scored_pairs_from_triples(
    anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[str] | None = None
) -> tuple[list[int], list[int], list[float], list[str]]:
    """Gold-scored pairs over the texts ``anchors + positives + negatives`` (see the module docstring).

    Returns ``(left, right, gold, texts)``: indices into ``texts`` of each pair's two sides, and its score.
    """
    n = len(anchors)
    texts = list(anchors) + list(positives) + (list(negatives) if negatives is not None else [])
    left, right, gold = [], [], []
    for i in range(n):
        left.append(i), right.append(n + i), gold.append(1.0)
        if negatives is not None:
            left.append(i), right.append(2 * n + i), gold.append(0.5)
        if n > 1:
            j = (i + n // 2) % n if n > 2 else 1 - i
            if positives[j] != positives[i]:
                left.append(i), right.append(n + j), gold.append(0.0)
    return left, right, gold, texts


def embedding_metrics(
    encode: Encode,
    anchors: Sequence[str],
    positives: Sequence[str],
    negatives: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    temperature: float | None = None,
    loss_batch_size: int = 32,
    diagnostics: dict | None = None,
) -> dict[str, float]:
    """All embedding metrics for (anchor, positive[, negative][, score]) rows.

    * ``sts_spearman``: Spearman of cos(anchor, other) against `scores` if given (then only the
      anchor/positive pairs), else against the gold of :func:`scored_pairs_from_triples`;
    * ``recall@k``, ``mrr@10``, ``ndcg@10``: anchor -> its positive among all distinct positives;
    * ``hard_negative_accuracy``: fraction with cos(anchor, positive) > cos(anchor, negative);
    * ``alignment`` (positive pairs), ``uniformity`` and ``effective_rank`` (all distinct texts);
    * `diagnostics` (a dict), if given, receives `pair_diagnostics` (histograms and spectrum, for the report);
    * with `temperature`: ``infonce_loss``, in-batch InfoNCE of anchors against positives in consecutive
      batches of `loss_batch_size`, and ``mi_lower_bound`` = log(batch) - loss (Oord et al. 2018).
    """
    if len(anchors) == 0 or len(anchors) != len(positives):
        raise ValueError("embedding_metrics needs equally many (>= 1) anchors and positives")
    left, right, gold, texts = scored_pairs_from_triples(anchors, positives, negatives)
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    emb = F.normalize(encode(unique).float(), dim=-1)
    row = torch.tensor([index[t] for t in texts])
    e = emb[row]
    n = len(anchors)
    a, p = e[:n], e[n : 2 * n]
    out: dict[str, float] = {}
    if scores is not None:
        out["sts_spearman"] = spearman((a * p).sum(1), torch.as_tensor(scores, dtype=torch.float64))
    else:
        sims = (e[left] * e[right]).sum(1)
        out["sts_spearman"] = spearman(sims, gold)
    # retrieval over distinct positive texts (duplicates of a positive count as relevant)
    cands = list(dict.fromkeys(positives))
    cand_index = {t: i for i, t in enumerate(cands)}
    cand_emb = emb[torch.tensor([index[t] for t in cands])]
    relevant = torch.tensor([cand_index[t] for t in positives])
    out.update(retrieval_metrics(a @ cand_emb.T, relevant, ks))
    if negatives is not None:
        neg = e[2 * n : 3 * n]
        out["hard_negative_accuracy"] = ((a * p).sum(1) > (a * neg).sum(1)).float().mean().item()
    out["alignment"] = alignment(a, p)
    out["uniformity"] = uniformity(emb)
    out["effective_rank"] = effective_rank(emb)
    if diagnostics is not None:  # filled in for the report (`mmssl report`)
        diagnostics.update(pair_diagnostics(a, p, emb))
    if temperature is not None and n >= 2:
        from mmssl.losses import info_nce

        losses, bounds = [], []
        for start in range(0, n - 1, loss_batch_size):
            qa, kp = a[start : start + loss_batch_size], p[start : start + loss_batch_size]
            if len(qa) < 2:
                continue
            loss = info_nce(qa, kp, temperature=temperature).item()
            losses.append(loss * len(qa))
            bounds.append((math.log(len(qa)) - loss) * len(qa))
        total = sum(len(a[s : s + loss_batch_size]) for s in range(0, n - 1, loss_batch_size)
                    if len(a[s : s + loss_batch_size]) >= 2)
        out["infonce_loss"] = sum(losses) / total
        out["mi_lower_bound"] = sum(bounds) / total
    out["num_pairs"] = float(n)
    return out
