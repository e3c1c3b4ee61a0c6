"""Projection and prediction heads built from a short layer spec, as lightly builds them.

A head is a list of layers, each ``(in_dim, out_dim, batch_norm, activation[, bias])`` (a tuple or a
:class:`Layer`): ``Linear(in_dim, out_dim)``, then batch norm (``True`` for ``BatchNorm1d(out_dim)``, or
a module such as ``BatchNorm1d(out_dim, affine=False)``), then the activation module (or ``None``). The
linear layer has a bias unless batch norm follows it (BN would cancel it), or as ``bias`` says.

Presets follow the papers (dimensions are arguments; defaults are the ResNet-50 ones): SimCLR, MoCo v2,
MoCo v3, BYOL and SimSiam, and :func:`text_head` for the SimCSE-style text encoder head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

__all__ = [
    "BackboneClassifier",
    "Layer",
    "MLPHead",
    "simclr_projection",
    "moco_v2_projection",
    "moco_v3_projection",
    "moco_v3_prediction",
    "byol_projection",
    "byol_prediction",
    "simsiam_projection",
    "simsiam_prediction",
    "text_head",
]


@dataclass(frozen=True)
class Layer:
    """One layer of a head: ``Linear(in_dim, out_dim, bias)`` -> batch norm -> activation."""

    in_dim: int
    out_dim: int
    batch_norm: bool | nn.Module | None = False  # True: BatchNorm1d(out_dim); False / None: none
    activation: nn.Module | None = None
    bias: bool | None = None  # None: a bias unless batch norm follows

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"head layer: {name} must be a positive int, got {v!r}")
        if self.batch_norm is not None and not isinstance(self.batch_norm, (bool, nn.Module)):
            raise ValueError(f"head layer: batch_norm must be a bool, a module or None, got {self.batch_norm!r}")
        if self.activation is not None and not isinstance(self.activation, nn.Module):
            raise ValueError(f"head layer: activation must be a module instance (e.g. nn.ReLU()) or None, "
                             f"got {self.activation!r}")
        features = getattr(self.batch_norm, "num_features", self.out_dim)
        if features != self.out_dim:
            raise ValueError(f"head layer: batch norm has {features} features but the layer gives {self.out_dim}")

    @classmethod
    def of(cls, spec: Layer | Sequence) -> Layer:
        """A :class:`Layer` from itself or a tuple ``(in_dim, out_dim, batch_norm, activation[, bias])``."""
        if isinstance(spec, Layer):
            return spec
        if not isinstance(spec, (tuple, list)) or not 2 <= len(spec) <= 5:
            raise ValueError(f"a head layer is (in_dim, out_dim, batch_norm, activation[, bias]), got {spec!r}")
        return cls(*spec)


class MLPHead(nn.Sequential):
    """A flat ``nn.Sequential`` (Linear, [BatchNorm], [activation]) * layers from a layer spec.

    ``in_features`` / ``out_features`` give the input and output widths (as ``nn.Linear`` does).
    A module given in the spec is used as is: do not reuse one batch-norm module for two layers.
    """

    def __init__(self, layers: Sequence[Layer | Sequence]) -> None:
        specs = [Layer.of(s) for s in layers]
        if not specs:
            raise ValueError("a head needs at least one layer")
        modules: list[nn.Module] = []
        for i, s in enumerate(specs):
            if i and s.in_dim != specs[i - 1].out_dim:
                raise ValueError(f"head layer {i} takes {s.in_dim} features but layer {i - 1} gives "
                                 f"{specs[i - 1].out_dim}")
            bn = nn.BatchNorm1d(s.out_dim) if s.batch_norm is True else (s.batch_norm or None)
            modules.append(nn.Linear(s.in_dim, s.out_dim, bias=bn is None if s.bias is None else s.bias))
            modules += [m for m in (bn, s.activation) if m is not None]
        stateful = [m for m in modules if any(True for _ in m.parameters()) or any(True for _ in m.buffers())]
        if len({id(m) for m in stateful}) != len(stateful):
            raise ValueError("one stateful module (e.g. a BatchNorm1d) appears in two head layers; give each its own")
        super().__init__(*modules)
        self.in_features, self.out_features = specs[0].in_dim, specs[-1].out_dim


def _mlp(dims: Sequence[int], batch_norm: bool, last_bn: bool | nn.Module = False,
         last_bias: bool | None = None) -> MLPHead:
    """Hidden layers Linear-[BN]-ReLU between consecutive ``dims``; the last layer Linear-[last_bn]."""
    hidden = [Layer(a, b, batch_norm, nn.ReLU()) for a, b in zip(dims[:-2], dims[1:-1])]
    return MLPHead([*hidden, Layer(dims[-2], dims[-1], last_bn, None, last_bias)])


def classifier_head(in_dim: int, hidden_dim: int | None, num_classes: int) -> MLPHead:
    """A pretext-task classifier: Linear-BN-ReLU-Linear (`hidden_dim` wide), or one Linear if `hidden_dim` is None."""
    return _mlp([in_dim, num_classes] if hidden_dim is None else [in_dim, hidden_dim, num_classes], True, False, True)


def simclr_projection(in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 128, *,
                      num_layers: int = 2, batch_norm: bool = True) -> MLPHead:
    """SimCLR projection g (Chen et al. 2020): ``num_layers`` linear layers (2 in v1, 3 in v2), ReLU between,
    batch norm after every layer if ``batch_norm`` (as lightly's ``SimCLRProjectionHead``)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return _mlp([in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim], batch_norm, batch_norm)


def swav_projection(in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 128) -> MLPHead:
    """SwAV projection (Caron et al. 2020): Linear-BN-ReLU-Linear, the output unnormalised by batch norm (as
    lightly's ``SwaVProjectionHead``); the embedding is L2-normalised before the prototypes."""
    return _mlp([in_dim, hidden_dim, out_dim], batch_norm=True)


def moco_v2_projection(in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 128) -> MLPHead:
    """MoCo v2 projection (Chen, Fan, Girshick & He 2020): Linear-ReLU-Linear, no batch norm."""
    return _mlp([in_dim, hidden_dim, out_dim], batch_norm=False)


def moco_v3_projection(in_dim: int = 2048, hidden_dim: int = 4096, out_dim: int = 256, *,
                       num_layers: int = 3) -> MLPHead:
    """MoCo v3 projection (Chen, Xie & He 2021): BN everywhere, no biases, last BN without affine."""
    if num_layers < 2:
        raise ValueError(f"num_layers must be >= 2, got {num_layers}")
    return _mlp([in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim], True,
                 nn.BatchNorm1d(out_dim, affine=False))


def moco_v3_prediction(in_dim: int = 256, hidden_dim: int = 4096, out_dim: int = 256) -> MLPHead:
    """MoCo v3 prediction: Linear-BN-ReLU-Linear, no biases (the official code's ``last_bn=False``)."""
    return _mlp([in_dim, hidden_dim, out_dim], True, last_bias=False)


def byol_projection(in_dim: int = 2048, hidden_dim: int = 4096, out_dim: int = 256) -> MLPHead:
    """BYOL projection (Grill et al. 2020): Linear(4096)-BN-ReLU-Linear(256)."""
    return _mlp([in_dim, hidden_dim, out_dim], batch_norm=True)


def byol_prediction(in_dim: int = 256, hidden_dim: int = 4096, out_dim: int = 256) -> MLPHead:
    """BYOL prediction q: the same architecture as the projection, from the projection's output."""
    return _mlp([in_dim, hidden_dim, out_dim], batch_norm=True)


def simsiam_projection(in_dim: int = 2048, hidden_dim: int = 2048, out_dim: int = 2048) -> MLPHead:
    """SimSiam projection (Chen & He 2021): 3 layers, BN after each, ReLU on the first two, last BN not affine."""
    return _mlp([in_dim, hidden_dim, hidden_dim, out_dim], True, nn.BatchNorm1d(out_dim, affine=False))


def simsiam_prediction(in_dim: int = 2048, hidden_dim: int = 512, out_dim: int = 2048) -> MLPHead:
    """SimSiam prediction h: a bottleneck Linear(512)-BN-ReLU-Linear (with bias, no BN)."""
    return _mlp([in_dim, hidden_dim, out_dim], batch_norm=True)


def text_head(kind: str, dim: int, out_dim: int | None = None) -> nn.Module:
    """The text encoder's training head: ``'none'`` (identity), ``'linear'`` or ``'mlp'`` (Linear-Tanh-Linear, SimCSE).

    The text encoder's head: the same modules, parameter names and
    initialisation (same random draws), so checkpoints and seeded runs are unchanged. ``'linear'`` is
    the single ``nn.Linear`` of a one-layer head; ``'mlp'`` is an :class:`MLPHead`.
    """
    out_dim = out_dim or dim
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return MLPHead([Layer(dim, out_dim)])[0]
    if kind == "mlp":
        return MLPHead([Layer(dim, dim, False, nn.Tanh()), Layer(dim, out_dim)])
    raise ValueError(f"head must be 'none', 'linear' or 'mlp', got {kind!r}")


class BackboneClassifier(nn.Module):
    """A backbone and a classifier on its features (RotNet's rotation head, FixMatch's class head):
    ``forward(images) -> (features, logits)``."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.backbone, self.classifier = backbone, classifier

    def forward(self, images):  # noqa: ANN001 - [B, C, H, W] -> ([B, D], [B, classes])
        features = self.backbone(images)
        return features, self.classifier(features)
