"""Vector quantisation (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning"):
each encoder vector is replaced by its nearest codebook vector; the gradient passes straight through the
replacement to the encoder, and a commitment loss ``beta * ||z - sg(q)||^2`` keeps the encoder near its codes.

The codebook learns by exponential moving averages, not by gradient (the paper's appendix; Sonnet's
``VectorQuantizerEMA``): per code k, ``N_k <- decay N_k + (1 - decay) n_k`` and
``m_k <- decay m_k + (1 - decay) sum_{z -> k} z``, the counts Laplace-smoothed
(``N_k' = (N_k + eps) / (N + K eps) * N``) and ``e_k = m_k / N_k'``. A code no vector picked for
``restart_after`` training forwards in a row is dead: it is re-initialised to a random encoder vector of the
current batch (Dhariwal et al. 2020, Jukebox). The codebook starts as random encoder vectors of the first
training batch. Codebook usage is the perplexity ``exp(H(p))`` of the codes' frequencies: K when every code is
used equally, 1 when one code takes everything.

Everything that changes (codebook, EMA statistics, the steps each code has gone unused, whether the codebook
was initialised) is a buffer, so checkpoints carry it and a resumed run continues exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """The index ``[N]`` of the codebook row ``[K, D]`` nearest (squared Euclidean) to each row of `z` ``[N, D]``."""
    distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(1)
    return distances.argmin(dim=1)


def straight_through(z: Tensor, quantized: Tensor) -> Tensor:
    """`quantized` in the forward pass, the identity on `z` in the backward pass."""
    return z + (quantized - z).detach()


def commitment_loss(z: Tensor, quantized: Tensor) -> Tensor:
    """Mean squared distance of the encoder vectors `z` to their (fixed) codes: pulls the encoder only."""
    return F.mse_loss(z.float(), quantized.detach().float())


def code_counts(codes: Tensor, num_codes: int) -> Tensor:
    """How many times each code occurs, ``[K]`` float."""
    return torch.bincount(codes.flatten(), minlength=num_codes).float()


def perplexity(counts: Tensor) -> Tensor:
    """``exp`` of the entropy (nats) of the code frequencies `counts` ``[K]``: the effective number of codes used."""
    p = counts.float() / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


def assignment_stats(z: Tensor, codes: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    """Per code: how many vectors of `z` ``[N, D]`` were assigned to it ``[K]`` and their sum ``[K, D]``."""
    sums = torch.zeros(num_codes, z.shape[1], device=z.device).index_add_(0, codes, z.float())
    return code_counts(codes, num_codes), sums


def ema_codebook(count: Tensor, embed_sum: Tensor, n_k: Tensor, sums: Tensor, decay: float,
                 eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """One EMA step of the codebook statistics: (new counts ``[K]``, new sums ``[K, D]``, the codebook ``[K, D]``
    they give, counts Laplace-smoothed with `eps`), from this step's `assignment_stats` `n_k` and `sums`."""
    k = count.shape[0]
    count = decay * count + (1 - decay) * n_k
    embed_sum = decay * embed_sum + (1 - decay) * sums
    total = count.sum()
    smoothed = (count + eps) / (total + k * eps) * total
    return count, embed_sum, embed_sum / smoothed.unsqueeze(1)


class VectorQuantizer(nn.Module):
    """Quantises vectors ``[N, D]`` against ``num_codes`` codes; in training mode it also updates the codebook
    (EMA) and restarts dead codes. See the module docstring."""

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5, restart_after: int = 100):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.eps, self.restart_after = num_codes, dim, decay, eps, restart_after
        self.register_buffer("codebook", torch.randn(num_codes, dim))
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # dead codes restarted so far
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """``quantized`` (straight-through, dtype of `z`), ``codes`` ``[N]``, ``commitment`` (unweighted),
        ``perplexity`` and ``codes_used`` of this batch."""
        flat = z.detach().float()
        if self.training and not bool(self.initialised):
            self._initialise(flat)
        codes = nearest_codes(flat, self.codebook)
        quantized = self.codebook[codes]
        counts = code_counts(codes, self.num_codes)
        if self.training:
            self._update(flat, codes)
        return {"quantized": straight_through(z, quantized.to(z.dtype)), "codes": codes,
                "commitment": commitment_loss(z, quantized), "perplexity": perplexity(counts),
                "codes_used": (counts > 0).sum().float()}

    @torch.no_grad()
    def _initialise(self, flat: Tensor) -> None:
        rows = torch.randint(len(flat), (self.num_codes,), device=flat.device)
        self.codebook.copy_(flat[rows])
        self.ema_sum.copy_(flat[rows])
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, flat: Tensor, codes: Tensor) -> None:
        n_k, sums = assignment_stats(flat, codes, self.num_codes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process moves the codebook with the whole (global) batch: sum its counts and vectors
            torch.distributed.all_reduce(n_k)
            torch.distributed.all_reduce(sums)
        count, embed_sum, codebook = ema_codebook(self.ema_count, self.ema_sum, n_k, sums, self.decay, self.eps)
        self.ema_count.copy_(count)
        self.ema_sum.copy_(embed_sum)
        self.codebook.copy_(codebook)
        self.unused_steps.add_(1).masked_fill_(n_k > 0, 0)
        if self.restart_after > 0:
            dead = (self.unused_steps >= self.restart_after).nonzero().flatten()
            if len(dead):
                rows = torch.randint(len(flat), (len(dead),), device=flat.device)
                self.codebook[dead] = flat[rows]
                self.ema_sum[dead] = flat[rows]
                self.ema_count[dead] = 1.0
                self.unused_steps[dead] = 0
                self.restarts.add_(len(dead))

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, decay={self.decay}, restart_after={self.restart_after}, "
                f"bits_per_code={math.log2(self.num_codes):.1f}")
