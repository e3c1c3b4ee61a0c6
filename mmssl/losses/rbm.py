"""The Bernoulli restricted Boltzmann machine's maths (Hinton 2002, "Training Products of Experts by Minimizing
Contrastive Divergence"; Hinton, Osindero & Teh 2006, "A Fast Learning Algorithm for Deep Belief Nets"; Tieleman
2008 for persistent chains): binary visible units v, binary hidden units h, energy
E(v, h) = -v.b - h.c - v W^T h (W ``[hidden, visible]``, laid out as ``nn.Linear(visible, hidden).weight``), so

* p(h_j = 1 | v) = sigmoid(c_j + W_j . v), p(v_i = 1 | h) = sigmoid(b_i + W[:, i] . h);
* the free energy F(v) = -v.b - sum_j softplus(c_j + W_j . v), with p(v) proportional to exp(-F(v)).

The log-likelihood's gradient is E_data[dF/dtheta] - E_model[dF/dtheta]. Contrastive divergence (CD-k) replaces
the model's expectation by visible states after k Gibbs steps from the data; persistent CD (PCD) by chains that
carry on from one update to the next. `cd_loss` is the surrogate mean F(v_data) - mean F(v_model) with v_model
detached: its autograd gradient is exactly the CD update (dW = <v h>_data - <v h>_model with hidden
probabilities, db = <v>_data - <v>_model, dc = <h>_data - <h>_model, with the sign of a loss to minimise), so any
optimiser can apply it. Its value is a free-energy gap, not a likelihood: it need not fall during training;
`reconstruction_error` is the usual progress figure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def hidden_probabilities(v: Tensor, weight: Tensor, hidden_bias: Tensor) -> Tensor:
    """p(h = 1 | v) ``[B, H]`` of visible states `v` ``[B, V]``."""
    return torch.sigmoid(F.linear(v, weight, hidden_bias))


def visible_probabilities(h: Tensor, weight: Tensor, visible_bias: Tensor) -> Tensor:
    """p(v = 1 | h) ``[B, V]`` of hidden states `h` ``[B, H]``."""
    return torch.sigmoid(h @ weight + visible_bias)


def bernoulli(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Binary states drawn with probabilities `p` (one uniform per unit, in row-major order: u < p)."""
    u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def free_energy(v: Tensor, weight: Tensor, visible_bias: Tensor, hidden_bias: Tensor) -> Tensor:
    """F(v) ``[B]`` = -v.b - sum_j softplus(c_j + W_j . v)."""
    return -(v @ visible_bias) - F.softplus(F.linear(v, weight, hidden_bias)).sum(dim=-1)


@torch.no_grad()
def gibbs_chain(v: Tensor, weight: Tensor, visible_bias: Tensor, hidden_bias: Tensor, steps: int,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """`steps` full Gibbs steps v -> h ~ p(h|v) -> v ~ p(v|h) from `v`: (the last visible samples, the
    probabilities they were drawn with). Each step draws the hidden uniforms, then the visible ones."""
    probabilities = v
    for _ in range(steps):
        h = bernoulli(hidden_probabilities(v, weight, hidden_bias), generator)
        probabilities = visible_probabilities(h, weight, visible_bias)
        v = bernoulli(probabilities, generator)
    return v, probabilities


def cd_loss(v_data: Tensor, v_model: Tensor, weight: Tensor, visible_bias: Tensor, hidden_bias: Tensor) -> Tensor:
    """mean F(v_data) - mean F(v_model), `v_model` (the negative phase's visible states) held constant: the
    gradient of this scalar is minus the CD / PCD estimate of the log-likelihood's gradient."""
    return (free_energy(v_data, weight, visible_bias, hidden_bias).mean()
            - free_energy(v_model.detach(), weight, visible_bias, hidden_bias).mean())


@torch.no_grad()
def reconstruction_error(v: Tensor, weight: Tensor, visible_bias: Tensor, hidden_bias: Tensor) -> Tensor:
    """Mean squared error between `v` and its mean-field reconstruction p(v | h = p(h | v))."""
    h = hidden_probabilities(v, weight, hidden_bias)
    return (visible_probabilities(h, weight, visible_bias) - v).pow(2).mean()
