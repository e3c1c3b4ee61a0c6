"""Losses of non-parametric instance discrimination against a memory bank (Wu et al. 2018): the NCE
approximation of the instance softmax, or the softmax over the positive and sampled negatives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def bank_logits(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """``[B, 1 + K]`` similarities / temperature: column 0 the positive ``[B, D]``, then the negatives, per example
    ``[B, K, D]`` or shared by the batch ``[K, D]``."""
    pos = (query * positive).sum(dim=1, keepdim=True)
    neg = query @ negatives.t() if negatives.dim() == 2 else torch.einsum("bd,bkd->bk", query, negatives)
    return torch.cat([pos, neg], dim=1).float() / temperature


def instance_softmax_loss(logits: Tensor) -> Tensor:
    """Cross-entropy with the positive in column 0 (the softmax over positive and sampled negatives)."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def instance_nce_loss(logits: Tensor, bank_size: int, log_z: Tensor | float) -> Tensor:
    """NCE with uniform noise over the `bank_size` instances (Wu et al. eq. 4-6): P(i|v) = exp(s_i) / Z, noise
    probability 1 / n, K noise samples per query; h = P / (P + K / n); loss = -log h(pos) - sum log(1 - h(neg)),
    averaged over queries. `log_z` is log Z (a constant estimated once from the first batch, as in the paper)."""
    k = logits.shape[1] - 1
    log_p = logits - log_z                              # log P(i|v)
    log_noise = math.log(k / bank_size)                 # log(K * Pn)
    log_h_pos = log_p[:, 0] - torch.logaddexp(log_p[:, 0], torch.full_like(log_p[:, 0], log_noise))
    log_1m_h_neg = log_noise - torch.logaddexp(log_p[:, 1:], torch.full_like(log_p[:, 1:], log_noise))
    return -(log_h_pos + log_1m_h_neg.sum(dim=1)).mean()


def estimate_log_z(negative_logits: Tensor, bank_size: int) -> Tensor:
    """log Z ~ log(n * mean exp(s)) over sampled (uniform) instances: the paper's Monte-Carlo estimate."""
    flat = negative_logits.detach().float().flatten()
    return torch.logsumexp(flat, dim=0) - math.log(flat.numel()) + math.log(bank_size)
