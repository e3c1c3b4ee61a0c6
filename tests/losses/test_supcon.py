"""SupCon (Khosla et al. 2020, L_out) against a naive loop over the 2N views, and equal to NT-Xent without labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmssl.losses import nt_xent
from mmssl.losses.supcon import same_label_mask, supcon


def rand(*shape, seed=0, grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_(grad)


def naive_supcon(z1, z2, labels, temperature):
    """Khosla eq. 2 literally: views [z1; z2]; P(i) = other views with i's label (>= 0), plus i's own pair."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    lab = [int(x) for x in labels] * 2
    n2, n = z.shape[0], z.shape[0] // 2
    out = []
    for i in range(n2):
        others = [a for a in range(n2) if a != i]
        denominator = torch.logsumexp(torch.stack([z[i] @ z[a] / temperature for a in others]), 0)
        pair = (i + n) % n2
        positives = [p for p in others if p == pair or (lab[i] >= 0 and lab[p] == lab[i])]
        out.append(-sum(z[i] @ z[p] / temperature - denominator for p in positives) / len(positives))
    return torch.stack(out)


@pytest.mark.parametrize("labels", [[0, 1, 0, 2, 1, 0], [0, -1, 0, -1, 3, 3], [4, 4, 4, 4, 4, 4]])
def test_supcon_matches_the_naive_formula_values_and_gradients(labels):
    z1, z2 = rand(6, 5, seed=1, grad=True), rand(6, 5, seed=2, grad=True)
    labels = torch.tensor(labels)
    got = supcon(z1, z2, labels, 0.2, reduction="none")
    ref = naive_supcon(z1, z2, labels, 0.2)
    assert got.shape == (12,) and torch.allclose(got, ref, atol=1e-10)
    mean = supcon(z1, z2, labels, 0.2)
    g_got, g_ref = torch.autograd.grad(mean, (z1, z2)), torch.autograd.grad(ref.mean(), (z1, z2))
    for a, b in zip(g_got, g_ref):
        assert b.abs().sum() > 0 and torch.allclose(a, b, atol=1e-10)
    # labels change the loss: it is not NT-Xent once two images share a label
    assert not torch.allclose(mean, nt_xent(z1, z2, 0.2))


def test_without_labels_supcon_is_nt_xent_exactly():
    z1, z2 = rand(7, 4, seed=3, grad=True), rand(7, 4, seed=4, grad=True)
    none = torch.full((7,), -1)
    got, ref = supcon(z1, z2, none, 0.5, reduction="none"), nt_xent(z1, z2, 0.5, reduction="none")
    assert torch.allclose(got, ref, atol=1e-12)
    distinct = torch.arange(7)  # every image its own class: also NT-Xent
    assert torch.allclose(supcon(z1, z2, distinct, 0.5, reduction="none"), ref, atol=1e-12)


def test_same_label_mask_keeps_the_pair_and_ignores_unlabelled_rows():
    mask = same_label_mask(torch.tensor([1, -1]), torch.tensor([0, 1, -1, 1]), label_offset=1)
    assert mask.tolist() == [[False, True, False, True], [False, False, True, False]]
    with pytest.raises(ValueError, match="label_offset"):
        same_label_mask(torch.tensor([0, 0]), torch.tensor([0, 0]), label_offset=1)


def test_bad_labels_are_refused():
    z = rand(3, 4)
    with pytest.raises(ValueError, match=r"labels must be \[N\] = \[3\]"):
        supcon(z, z, torch.tensor([0, 1]))



def test_two_processes_gathered_equal_one_process_holding_the_batch(monkeypatch):
    """The gathers stood in for by functions that put this rank's rows among the other rank's (rank order): the
    mean of the two ranks' losses (what DDP averages) is the loss of one process holding the whole batch."""
    import mmssl.losses.supcon as module

    z1, z2 = rand(8, 4, seed=5), rand(8, 4, seed=6)
    labels = torch.tensor([0, 1, -1, 1, 0, 2, -1, 1])
    full = supcon(z1, z2, labels, 0.3, gather=False)
    losses = []
    for rank in (0, 1):
        wholes = iter([F.normalize(z1, dim=-1), F.normalize(z2, dim=-1), labels])  # in supcon's order of gathers

        def gather(x, group=None, r=rank, wholes=wholes):
            whole = next(wholes)
            return torch.cat([whole[: 4 * r], x, whole[4 * r + 4:]])

        monkeypatch.setattr(module, "gather_with_grad", gather)
        monkeypatch.setattr(module, "gather_no_grad", gather)
        monkeypatch.setattr(module, "local_slice_offset", lambda n, group=None, r=rank: r * n)
        local = slice(4 * rank, 4 * rank + 4)
        losses.append(supcon(z1[local], z2[local], labels[local], 0.3))
    assert torch.allclose((losses[0] + losses[1]) / 2, full, atol=1e-12)
    assert not torch.allclose(losses[0], full)  # each rank's anchors alone differ from the whole batch
