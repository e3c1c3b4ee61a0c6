"""Heads from a layer spec, the SSL presets, and the text encoder head expressed with them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmssl.models import heads
from mmssl.models.heads import Layer, MLPHead, text_head


def kinds(m: nn.Module) -> list[str]:
    """``Linear(in,out,bias)``, ``BN(n,affine)`` or the class name of each module, in order."""
    out = []
    for x in m:
        if isinstance(x, nn.Linear):
            out.append(f"Linear({x.in_features},{x.out_features},{x.bias is not None})")
        elif isinstance(x, nn.BatchNorm1d):
            out.append(f"BN({x.num_features},{x.affine})")
        else:
            out.append(type(x).__name__)
    return out


@pytest.mark.slow
def test_spec_tuples_and_layers_build_the_same_head():
    torch.manual_seed(0)
    a = MLPHead([(6, 8, True, nn.ReLU()), (8, 4, None, None)])  # lightly's tuple form
    torch.manual_seed(0)
    b = MLPHead([Layer(6, 8, batch_norm=True, activation=nn.ReLU()), Layer(8, 4)])
    assert kinds(a) == kinds(b) == ["Linear(6,8,False)", "BN(8,True)", "ReLU", "Linear(8,4,True)"]
    assert a.in_features == 6 and a.out_features == 4
    for (n1, t1), (n2, t2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
    a.train()
    assert a(torch.randn(5, 6)).shape == (5, 4)


def test_bias_and_batch_norm_options():
    bn = nn.BatchNorm1d(3, affine=False)
    head = MLPHead([(2, 3, bn, nn.GELU(), True), Layer(3, 3, False, nn.Tanh(), bias=False)])
    assert kinds(head) == ["Linear(2,3,True)", "BN(3,False)", "GELU", "Linear(3,3,False)", "Tanh"]
    assert head[1] is bn


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([], "at least one layer"),
        ([(4, 5), (6, 2)], "takes 6 features but layer 0 gives 5"),
        ([(4, 5, nn.BatchNorm1d(3))], "batch norm has 3 features"),
        ([(4, 5, False, nn.ReLU)], "module instance"),
        ([(4, 0)], "positive int"),
        ([(4,)], "a head layer is"),
        ([(4, 5, "bn")], "batch_norm must be"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        MLPHead(spec)


def test_shared_batch_norm_is_refused():
    bn = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match="two head layers"):
        MLPHead([(4, 4, bn, nn.ReLU()), (4, 4, bn, None)])
    relu = nn.ReLU()  # stateless modules may be shared
    assert len(MLPHead([(4, 4, False, relu), (4, 4, False, relu)])) == 4


def test_presets_default_dims_follow_the_papers():
    linears = lambda m: [(x.in_features, x.out_features) for x in m if isinstance(x, nn.Linear)]  # noqa: E731
    assert linears(heads.simclr_projection()) == [(2048, 2048), (2048, 128)]
    assert linears(heads.moco_v2_projection()) == [(2048, 2048), (2048, 128)]
    assert linears(heads.swav_projection()) == [(2048, 2048), (2048, 128)]
    assert linears(heads.byol_projection()) == [(2048, 4096), (4096, 256)]
    assert linears(heads.byol_prediction()) == [(256, 4096), (4096, 256)]
    assert linears(heads.simsiam_projection()) == [(2048, 2048), (2048, 2048), (2048, 2048)]
    assert linears(heads.simsiam_prediction()) == [(2048, 512), (512, 2048)]
    assert linears(heads.moco_v3_projection()) == [(2048, 4096), (4096, 4096), (4096, 256)]
    assert linears(heads.moco_v3_prediction()) == [(256, 4096), (4096, 256)]


def test_preset_structures():
    assert kinds(heads.simclr_projection(8, 6, 4)) == ["Linear(8,6,False)", "BN(6,True)", "ReLU",
                                                        "Linear(6,4,False)", "BN(4,True)"]
    assert kinds(heads.simclr_projection(8, 6, 4, num_layers=3, batch_norm=False)) == [
        "Linear(8,6,True)", "ReLU", "Linear(6,6,True)", "ReLU", "Linear(6,4,True)"]
    assert kinds(heads.moco_v2_projection(8, 6, 4)) == ["Linear(8,6,True)", "ReLU", "Linear(6,4,True)"]
    assert kinds(heads.swav_projection(8, 6, 4)) == ["Linear(8,6,False)", "BN(6,True)", "ReLU", "Linear(6,4,True)"]
    byol = ["Linear(8,16,False)", "BN(16,True)", "ReLU", "Linear(16,4,True)"]
    assert kinds(heads.byol_projection(8, 16, 4)) == kinds(heads.byol_prediction(8, 16, 4)) == byol
    assert kinds(heads.simsiam_projection(8, 6, 4)) == ["Linear(8,6,False)", "BN(6,True)", "ReLU",
                                                         "Linear(6,6,False)", "BN(6,True)", "ReLU",
                                                         "Linear(6,4,False)", "BN(4,False)"]
    assert kinds(heads.simsiam_prediction(4, 2, 4)) == ["Linear(4,2,False)", "BN(2,True)", "ReLU", "Linear(2,4,True)"]
    assert kinds(heads.moco_v3_projection(8, 6, 4)) == ["Linear(8,6,False)", "BN(6,True)", "ReLU",
                                                         "Linear(6,6,False)", "BN(6,True)", "ReLU",
                                                         "Linear(6,4,False)", "BN(4,False)"]
    assert kinds(heads.moco_v3_prediction(4, 6, 4)) == ["Linear(4,6,False)", "BN(6,True)", "ReLU", "Linear(6,4,False)"]
    with pytest.raises(ValueError, match="num_layers"):
        heads.simclr_projection(num_layers=0)


@pytest.mark.slow
def test_simsiam_projection_output_is_batch_normalised():
    torch.manual_seed(0)
    head = heads.simsiam_projection(6, 8, 5).train()
    out = head(torch.randn(32, 6))
    assert torch.allclose(out.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(out.var(0, unbiased=False), torch.ones(5), atol=1e-3)


@pytest.mark.parametrize("out_dim", [None, 3])
def test_text_head_matches_the_text_encoder_head(out_dim):
    """Same modules, parameter names and (seeded) initial values as the text encoder's head had before."""
    dim, out = 5, out_dim or 5
    torch.manual_seed(7)
    mlp_ref = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out))
    torch.manual_seed(7)
    mlp = text_head("mlp", dim, out_dim)
    assert kinds(mlp) == kinds(mlp_ref) and isinstance(mlp, nn.Sequential) and mlp[-1].out_features == out
    assert list(mlp.state_dict()) == list(mlp_ref.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for k, v in mlp_ref.state_dict().items():
        assert torch.equal(mlp.state_dict()[k], v)
    torch.manual_seed(7)
    lin_ref = nn.Linear(dim, out)
    torch.manual_seed(7)
    lin = text_head("linear", dim, out_dim)
    assert type(lin) is nn.Linear and lin.out_features == out
    assert torch.equal(lin.weight, lin_ref.weight) and torch.equal(lin.bias, lin_ref.bias)
    assert isinstance(text_head("none", dim, out_dim), nn.Identity)
    with pytest.raises(ValueError, match="'none', 'linear' or 'mlp'"):
        text_head("deep", dim)
