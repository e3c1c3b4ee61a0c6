"""Negative cosine similarity (BYOL / SimSiam): hand values, both forms, and the stop-gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmssl.losses import negative_cosine, symmetric_negative_cosine


def rand(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_(grad)


def test_hand_values():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    z = torch.tensor([[0.0, 5.0], [3.0, 3.0], [-1.0, 0.0]])  # cos = 0, 1, -1
    assert torch.allclose(negative_cosine(p, z, reduction="none"), torch.tensor([0.0, -1.0, 1.0]))
    assert torch.allclose(negative_cosine(p, z, form="byol", reduction="none"), torch.tensor([2.0, 0.0, 4.0]))
    assert torch.allclose(negative_cosine(p, z), torch.tensor(0.0))
    assert torch.allclose(negative_cosine(p, z, form="byol", reduction="sum"), torch.tensor(6.0))


def test_byol_form_is_normalised_mse():
    p, z = rand(6, 4, seed=1), rand(6, 4, seed=2)
    mse = (F.normalize(p, dim=-1) - F.normalize(z, dim=-1)).pow(2).sum(-1)
    assert torch.allclose(negative_cosine(p, z, form="byol", reduction="none"), mse, atol=1e-12)
    assert torch.allclose(negative_cosine(p, z), -F.cosine_similarity(p, z).mean(), atol=1e-12)


def test_symmetric_values():
    p1, p2, z1, z2 = (rand(5, 3, seed=s) for s in range(4))
    d = lambda a, b: -F.cosine_similarity(a, b).mean()  # noqa: E731
    assert torch.allclose(symmetric_negative_cosine(p1, p2, z1, z2), (d(p1, z2) + d(p2, z1)) / 2, atol=1e-12)
    byol = symmetric_negative_cosine(p1, p2, z1, z2, form="byol")
    assert torch.allclose(byol, (2 + 2 * d(p1, z2)) + (2 + 2 * d(p2, z1)), atol=1e-12)


def test_symmetric_targets_get_no_gradient():
    p1, p2 = rand(4, 3, seed=1, grad=True), rand(4, 3, seed=2, grad=True)
    z1, z2 = rand(4, 3, seed=3, grad=True), rand(4, 3, seed=4, grad=True)
    symmetric_negative_cosine(p1, p2, z1, z2).backward()
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    assert z1.grad is None and z2.grad is None
    # the plain function does not detach: the caller's z.detach() is what stops the gradient
    negative_cosine(p1, z2).backward()
    assert z2.grad is not None and z2.grad.abs().sum() > 0


def test_simsiam_stop_gradient_through_shared_projector():
    """z1 feeds both p1 = h(z1) and the target of p2: only the predictor path may carry gradient."""
    torch.manual_seed(0)
    f, h = nn.Linear(3, 4).double(), nn.Linear(4, 4).double()
    x1, x2 = rand(5, 3, seed=1), rand(5, 3, seed=2)

    def z_grads(loss_fn):
        z1, z2 = f(x1), f(x2)
        z1.retain_grad()
        loss_fn(h(z1), h(z2), z1, z2).backward()
        return z1.grad.clone()

    got = z_grads(symmetric_negative_cosine)
    ref = z_grads(lambda p1, p2, z1, z2: (negative_cosine(p1, z2.detach()) + negative_cosine(p2, z1.detach())) / 2)
    leaky = z_grads(lambda p1, p2, z1, z2: (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2)
    assert torch.allclose(got, ref, atol=1e-12)
    assert not torch.allclose(got, leaky, atol=1e-6)


def test_half_precision_is_computed_in_float32():
    p, z = rand(4, 8, seed=1).bfloat16(), rand(4, 8, seed=2).bfloat16()
    out = negative_cosine(p, z, form="byol")
    assert out.dtype == torch.float32
    assert torch.allclose(out, negative_cosine(p.float(), z.float(), form="byol"))


def test_errors():
    with pytest.raises(ValueError, match="equal shapes"):
        negative_cosine(rand(3, 2), rand(3, 4))
    with pytest.raises(ValueError, match="form"):
        negative_cosine(rand(3, 2), rand(3, 2), form="mse")
    with pytest.raises(ValueError, match="reduction"):
        negative_cosine(rand(3, 2), rand(3, 2), reduction="max")
