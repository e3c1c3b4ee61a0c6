"""Colourisation (Zhang, Isola & Efros 2016, "Colorful Image Colorization"): the backbone sees only the lightness
of an image and predicts its colour, as a distribution over quantised ab bins per cell of a coarse grid with the
paper's class rebalancing (rare saturated colours weigh as much as greys), or by regression of the ab values.
The prediction is made from the backbone's pooled features (a light linear decoder to a `grid` x `grid` map),
so every cell's colour must come from the global representation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.data.image_views import TwoViewsConfig
from mmssl.data.lab import AB_RANGE, ab_bins, nearest_bin, rebalancing_weights, rgb_to_lab
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import PositiveFloat, Probability, Range


def _colour_preserving_views() -> TwoViewsConfig:
    # colour is the target: crops and flips only
    return TwoViewsConfig(preset="none", random_resized_crop=True, crop_scale=[0.5, 1.0], horizontal_flip=0.5)


@dataclass
class ColorizationParams(ImageSSLParams):
    views: TwoViewsConfig = field(default_factory=_colour_preserving_views)
    mode: Literal["bins", "regression"] = "bins"
    grid: Annotated[int, Range(1, 64)] = 8  # the predicted colour map is grid x grid cells
    bin_size: PositiveFloat = 10.0
    rebalance: Probability = 0.5  # the paper's lambda: 0 = no rebalancing, 1 = uniform over bins
    rebalance_images: Annotated[int, Range(1)] = 2000  # training images that estimate the bin frequencies


class ColorizationModule(nn.Module):
    def __init__(self, backbone: Backbone, hidden_dim: int, outputs: int, grid: int):
        super().__init__()
        self.backbone, self.grid, self.outputs = backbone, grid, outputs
        self.decoder = nn.Sequential(nn.Linear(backbone.dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, outputs * grid * grid))

    def forward(self, lightness_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(lightness_images)
        out = self.decoder(features).view(-1, self.outputs, self.grid, self.grid)
        return features, out


@register_objective("colorization")
class Colorization(ImageSSL):
    Params = ColorizationParams
    num_views = 1

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        self.bins = ab_bins(p.bin_size)
        outputs = len(self.bins) if p.mode == "bins" else 2
        self.bin_weights = self._bin_weights() if p.mode == "bins" else None
        return ColorizationModule(backbone, p.hidden_dim, outputs, p.grid)

    def _bin_weights(self) -> torch.Tensor:
        p = self.params
        rows = torch.linspace(0, len(self.train) - 1, min(p.rebalance_images, len(self.train))).long()
        counts = torch.zeros(len(self.bins))
        for start in range(0, len(rows), 256):
            images = self.train.images[rows[start : start + 256]].float() / 255
            ab = self.targets(images)[1]
            counts += torch.bincount(nearest_bin(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.bins),
                                     minlength=len(self.bins)).float()
        return rebalancing_weights(counts, p.rebalance, bins=self.bins, step=p.bin_size)

    def targets(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lightness input ``[B, 3, H, W]`` normalised like the backbone's images, ab ``[B, 2, grid, grid]``)
        from sRGB images in [0, 1]."""
        lab = rgb_to_lab(rgb)
        grey = (lab[:, :1] / 100).expand(-1, 3, -1, -1)
        mean, std = self.pixel_stats(rgb.device)
        ab = F.adaptive_avg_pool2d(lab[:, 1:], self.params.grid)
        return ((grey - mean) / std).contiguous(memory_format=torch.channels_last), ab

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        mean, std = self.pixel_stats(batch["view1"].device)
        rgb = (batch["view1"].float() * std + mean).clamp(0, 1)  # the view, un-normalised
        inputs, ab = self.targets(rgb)
        features, out = module(inputs)
        if p.mode == "regression":
            loss = F.smooth_l1_loss(out.float() / AB_RANGE, ab / AB_RANGE)
            return {"loss": loss, "embedding": features.detach()}
        target = nearest_bin(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.bins).view(ab.shape[0], p.grid, p.grid)
        weights = self.bin_weights.to(out.device)
        per_cell = F.cross_entropy(out.float(), target, reduction="none")
        loss = (per_cell * weights[target]).mean()
        accuracy = (out.detach().argmax(dim=1) == target).float().mean()
        return {"loss": loss, "bin_accuracy": accuracy, "embedding": features.detach()}
