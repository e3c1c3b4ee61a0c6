"""Contrastive predictive coding for images (van den Oord, Li & Vinyals 2018; Hénaff et al. 2019, "CPC v2"):
each image is cut into an overlapping grid of patches (`patch_size`, `patch_stride`: 32 px, 8 and 4 give a 7x7
grid, Hénaff's 256 / 64 / 32 scaled down), every patch goes through the shared backbone on its own (pooled to one
vector z), a context network of causal convolutions (`mmssl.losses.cpc.CausalRowConv`: the context at row r
sees rows r and above only, PixelCNN's top-to-bottom order) summarises the grid, and for each offset
k = 1..`prediction_steps` a linear map W_k of the context at (r, c) must pick out z at (r + k, c) among every
patch of the batch (InfoNCE, `mmssl.losses.cpc.offset_loss` on the shared `info_nce`).

The exported encoder is the backbone (timm) on whole images, as every image method's. Hénaff et al. evaluate
CPC's encoder on the patch grid instead (features of the patches, pooled); with `patch_eval` (default) the
frozen-backbone evaluation also reports that view as ``patch_knn_top1`` / ``patch_linear_probe_top1`` (and
their random-init floors), since a backbone trained on 8 px patches meets 32 px images only at evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
from torch import nn

from mmssl.data.image_views import TwoViewsConfig
from mmssl.errors import RecipeError
from mmssl.eval.frozen_backbone import frozen_backbone_metrics
from mmssl.losses.cpc import CausalRowConv, extract_patches, grid_size, offset_loss
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import PositiveFloat, PositiveInt, Range

PATCH_METRICS = ("knn_top1", "knn_top5", "linear_probe_top1", "linear_probe_top5")


def _cpc_views() -> TwoViewsConfig:
    # the prediction across patches is the task: crops, flips and some grey images only add data
    return TwoViewsConfig(preset="none", random_resized_crop=True, crop_scale=[0.5, 1.0], horizontal_flip=0.5,
                          grayscale=0.25)


@dataclass
class CPCParams(ImageSSLParams):
    views: TwoViewsConfig = field(default_factory=_cpc_views)
    patch_size: Annotated[int, Range(2, 1024)] = 8  # side of a patch in pixels
    patch_stride: Annotated[int, Range(1, 1024)] = 4  # pixels between neighbouring patches (< patch_size: overlap)
    prediction_steps: PositiveInt = 3  # K: rows below predicted from the context at a row (offsets 1..K)
    context_layers: Annotated[int, Range(1, 64)] = 3  # residual causal blocks (each widens the view by a row)
    # hidden_dim (ImageSSLParams) is the context network's width
    temperature: PositiveFloat = 1.0  # InfoNCE temperature on the scores (CPC: plain dot products, T = 1)
    normalize: bool = False  # cosine scores instead of dot products (then lower the temperature, e.g. 0.1)
    patch_eval: bool = True  # also evaluate the frozen backbone on the patch grid, pooled (Hénaff et al.)


class CausalBlock(nn.Module):
    """ReLU, causal 2x3 convolution, ReLU, 1x1 convolution, plus the input (a PixelCNN-style residual block)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = CausalRowConv(width, width, 2, 3)
        self.mix = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(torch.relu(self.conv(torch.relu(x))))


def patch_features(backbone: nn.Module, images: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """The backbone's features of every patch of the grid ``[B, G, G, D]``, each patch encoded on its own."""
    patches = extract_patches(images, patch_size, stride)
    b, g = patches.shape[:2]
    flat = patches.reshape(b * g * g, *patches.shape[3:]).contiguous(memory_format=torch.channels_last)
    return backbone(flat).view(b, g, g, -1)


class CPCModule(nn.Module):
    def __init__(self, backbone: Backbone, width: int, layers: int, steps: int, patch_size: int, stride: int):
        super().__init__()
        self.backbone, self.patch_size, self.stride = backbone, patch_size, stride
        self.context = nn.Sequential(nn.Conv2d(backbone.dim, width, 1), *[CausalBlock(width) for _ in range(layers)],
                                     nn.ReLU())
        self.predictors = nn.ModuleList(nn.Linear(width, backbone.dim) for _ in range(steps))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``[B, G, G, D]`` of `images` ``[B, C, S, S]``."""
        return patch_features(self.backbone, images, self.patch_size, self.stride)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(patch embeddings ``[B, G, G, D]``, for each offset k the predictions W_k c ``[B, G, G, D]``)."""
        z = self.encode(images)
        context = self.context(z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # [B, G, G, width]
        return z, [predict(context) for predict in self.predictors]


class PatchPooled(nn.Module):
    """A backbone seen through the patch grid: the mean of its features over the patches of each image (how
    Hénaff et al. read CPC's encoder), for the ``patch_*`` evaluation."""

    def __init__(self, backbone: nn.Module, patch_size: int, stride: int):
        super().__init__()
        self.backbone, self.patch_size, self.stride = backbone, patch_size, stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return patch_features(self.backbone, images, self.patch_size, self.stride).flatten(1, 2).mean(dim=1)


@register_objective("cpc")
class CPC(ImageSSL):
    Params = CPCParams
    num_views = 1

    def check(self, world_size: int) -> None:
        p = self.params
        if p.patch_size > p.image_size:
            raise RecipeError(f"objective.patch_size={p.patch_size} is larger than objective.image_size="
                              f"{p.image_size}; lower objective.patch_size")
        if (p.image_size - p.patch_size) % p.patch_stride:
            raise RecipeError(f"objective.patch_stride={p.patch_stride} does not tile objective.image_size="
                              f"{p.image_size} with patches of {p.patch_size} px (image_size - patch_size must be a "
                              "multiple of patch_stride, or the last pixels are never seen); e.g. image_size 32, "
                              "patch_size 8, patch_stride 4 (a 7x7 grid)")
        rows = grid_size(p.image_size, p.patch_size, p.patch_stride)
        if p.prediction_steps >= rows:
            raise RecipeError(f"objective.prediction_steps={p.prediction_steps}: the {rows}x{rows} patch grid "
                              f"(image_size {p.image_size}, patch_size {p.patch_size}, patch_stride "
                              f"{p.patch_stride}) has no row {p.prediction_steps} rows below the first; use "
                              f"prediction_steps <= {rows - 1} or a finer grid")

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        return CPCModule(backbone, p.hidden_dim, p.context_layers, p.prediction_steps, p.patch_size, p.patch_stride)

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor | None) -> dict[str, torch.Tensor]:
        p = self.params
        z, predictions = module(view1)
        per_offset = [offset_loss(pred, z, k, p.temperature, p.normalize) for k, pred in enumerate(predictions, 1)]
        out = {f"loss_k{k}": loss.detach() for k, loss in enumerate(per_offset, 1)}
        return {"loss": torch.stack(per_offset).mean(), **out, "embedding": z.detach().mean(dim=(1, 2))}

    # -- evaluation: the whole image (what the export gives) and, with patch_eval, the pooled patch grid ----------
    def setup(self) -> None:
        self.floor_measure: dict[str, float] | None = None
        super().setup()
        if self.floor_measure is not None:  # measured now (not read from a resumed run's floor file)
            self.before.update({f"random_init_{k}": self.floor_measure[k]
                                for k in ("patch_knn_top1", "patch_linear_probe_top1") if k in self.floor_measure})

    def _measure(self, backbone: nn.Module, device: torch.device, diagnostics: dict | None = None) -> dict[str, float]:
        out = super()._measure(backbone, device, diagnostics)
        p = self.params
        if p.patch_eval:
            pooled = frozen_backbone_metrics(PatchPooled(backbone, p.patch_size, p.patch_stride), self.train,
                                             self.eval, self.settings(), device)
            out.update({f"patch_{k}": v for k, v in pooled.items() if k in PATCH_METRICS})
        if hasattr(self, "floor_measure") and self.floor_measure is None:  # the first measure of setup: the floor
            self.floor_measure = out
        return out
