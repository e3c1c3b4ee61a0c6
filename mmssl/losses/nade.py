"""The neural autoregressive distribution estimator's maths (Larochelle & Murray 2011, "The Neural Autoregressive
Distribution Estimator") for D binary pixels v in raster order and H hidden units:

* a_d = c + W[:, <d] v_<d (so a_1 = c), h_d = sigmoid(a_d);
* p(v_d = 1 | v_<d) = sigmoid(b_d + V_d . h_d), and p(v) = prod_d p(v_d | v_<d), a normalised distribution.

W ``[H, D]`` (laid out as ``nn.Linear(D, H).weight``), c ``[H]``, V ``[D, H]``, b ``[D]``. Weight sharing makes
every a_d a prefix sum of the columns W[:, k] v_k, so `nade_nll` computes all D conditionals of a batch at once
with an exclusive cumulative sum (O(B H D), as the paper's recursion a_{d+1} = a_d + W[:, d] v_d); the last
column W[:, D] never enters a conditional (it gets no gradient). `nade_sample` draws pixel by pixel with that
recursion. Log-probabilities are in nats; `bits_per_dim` converts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def nade_logits(v: Tensor, weight: Tensor, hidden_bias: Tensor, output_weight: Tensor, output_bias: Tensor) -> Tensor:
    """The logits of p(v_d = 1 | v_<d) ``[B, D]`` of pixels `v` ``[B, D]`` (binary, or in [0, 1]), all d at once."""
    # shifted by one pixel (the small tensors, not the big one): entry d holds v_{d-1} W[:, d-1], entry 1 zero,
    # so the inclusive cumulative sum at d is sum_{k<d} W[:, k] v_k
    shifted_v, shifted_w = F.pad(v[:, :-1], (1, 0)), F.pad(weight[:, :-1], (1, 0))
    contributions = shifted_v.unsqueeze(2) * shifted_w.t().unsqueeze(0)  # [B, D, H] (H contiguous)
    a = torch.cumsum(contributions, dim=1) + hidden_bias
    return output_bias + (torch.sigmoid(a) * output_weight).sum(dim=2)


def nade_nll(v: Tensor, weight: Tensor, hidden_bias: Tensor, output_weight: Tensor, output_bias: Tensor) -> Tensor:
    """-log p(v) ``[B]`` in nats: the sum over pixels of each conditional's binary cross-entropy."""
    logits = nade_logits(v, weight, hidden_bias, output_weight, output_bias)
    return F.binary_cross_entropy_with_logits(logits, v, reduction="none").sum(dim=1)


@torch.no_grad()
def nade_sample(n: int, weight: Tensor, hidden_bias: Tensor, output_weight: Tensor, output_bias: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """`n` images drawn pixel by pixel in raster order: (the binary samples ``[n, D]``, the probabilities
    p(v_d = 1 | v_<d) each pixel was drawn with). One uniform per image and pixel, pixel-major."""
    hidden, pixels = weight.shape
    a = hidden_bias.expand(n, hidden).clone()
    samples = torch.zeros(n, pixels, dtype=weight.dtype, device=weight.device)
    probabilities = torch.zeros_like(samples)
    for d in range(pixels):
        p = torch.sigmoid(output_bias[d] + torch.sigmoid(a) @ output_weight[d])
        u = torch.rand(n, generator=generator, device=weight.device, dtype=weight.dtype)
        samples[:, d], probabilities[:, d] = (u < p).to(weight.dtype), p
        a += samples[:, d : d + 1] * weight[:, d]
    return samples, probabilities


def bits_per_dim(nll_nats: Tensor | float, dims: int) -> float:
    """Mean negative log-likelihood per image in nats -> bits per pixel."""
    return float(nll_nats) / (dims * math.log(2))


def bernoulli_baseline(train: Tensor, smoothing: float = 1.0) -> Tensor:
    """The independent per-pixel Bernoulli fitted on training pixels `train` ``[N, D]`` (binary, or probabilities
    for an expected count): p_d = (sum_n v_nd + smoothing) / (N + 2 smoothing) (add-one/Laplace by default, so a
    pixel never seen on in training does not make a held-out image impossible)."""
    return (train.double().sum(dim=0) + smoothing) / (train.shape[0] + 2 * smoothing)


def bernoulli_nll(v: Tensor, p: Tensor) -> Tensor:
    """-log p(v) ``[B]`` in nats of pixels `v` ``[B, D]`` under independent Bernoullis `p` ``[D]``."""
    v, p = v.double(), p.double()
    return -(v * torch.log(p) + (1 - v) * torch.log1p(-p)).sum(dim=1)
