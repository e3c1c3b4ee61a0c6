"""Jigsaw (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles"):
an image is cut into a 3x3 grid; from each cell a tile is cropped at a random offset, leaving a gap so that edges
do not continue across tiles; the 9 tiles are shuffled by one permutation from a fixed set chosen for maximal
Hamming distance, go through the backbone one by one (shared weights), and a head on their concatenated
features predicts which permutation it was."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmssl.data.image_views import TwoViewsConfig
from mmssl.errors import RecipeError
from mmssl.models.heads import classifier_head
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, Range

GRID = 3
TILES = GRID * GRID


@functools.lru_cache(maxsize=8)
def permutation_set(size: int, seed: int = 0) -> np.ndarray:
    """``[size, 9]`` permutations of the tiles, chosen greedily for maximal Hamming distance (the paper's
    algorithm): start from one random permutation, then add the permutation of all 9! whose smallest distance
    to those already chosen is largest (ties: the first in a seeded random order)."""
    import itertools

    if not 2 <= size <= 1000:
        raise ValueError(f"the permutation set size must be between 2 and 1000, got {size}")
    rng = np.random.default_rng(seed)
    count = 362_880  # 9!
    everything = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(TILES))), dtype=np.int8,
                             count=count * TILES).reshape(count, TILES)
    everything = everything[rng.permutation(len(everything))]
    chosen = [0]
    closest = (everything != everything[0]).sum(axis=1)
    for _ in range(size - 1):
        nxt = int(closest.argmax())
        chosen.append(nxt)
        closest = np.minimum(closest, (everything != everything[nxt]).sum(axis=1))
    return everything[chosen].astype(np.int64)


def min_hamming_distance(perms: np.ndarray) -> int:
    distances = (perms[:, None, :] != perms[None, :, :]).sum(axis=2)
    np.fill_diagonal(distances, TILES + 1)
    return int(distances.min())


def cut_tiles(images: torch.Tensor, tile: int, jitter: torch.Tensor) -> torch.Tensor:
    """``[B, 9, C, tile, tile]``: from cell (r, c) of a 3x3 grid over `images` ``[B, C, S, S]``, the tile at
    offset ``jitter[b, r * 3 + c]`` (``[B, 9, 2]`` pixels (dy, dx), each in ``[0, cell - tile]``)."""
    b, c, s, _ = images.shape
    cell = s // GRID
    jitter = jitter.to(images.device)
    offsets = torch.arange(GRID, device=images.device) * cell
    top = offsets.repeat_interleave(GRID) + jitter[..., 0]  # [B, 9]: cell k's first row + dy
    left = offsets.repeat(GRID) + jitter[..., 1]  # [B, 9]: cell k's first column + dx
    span = torch.arange(tile, device=images.device)
    rows = (top.unsqueeze(-1) + span).view(b, TILES, tile, 1)
    cols = (left.unsqueeze(-1) + span).view(b, TILES, 1, tile)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    return images[batch, :, rows, cols].permute(0, 1, 4, 2, 3)  # one gather: [B, 9, t, t, C] -> [B, 9, C, t, t]


def _jigsaw_views() -> TwoViewsConfig:
    return TwoViewsConfig(preset="none", random_resized_crop=True, crop_scale=[0.6, 1.0], horizontal_flip=0.5,
                          grayscale=0.3)


@dataclass
class JigsawParams(ImageSSLParams):
    views: TwoViewsConfig = field(default_factory=_jigsaw_views)
    permutations: Annotated[int, Range(2, 1000)] = 100
    gap: NonNegativeInt = 2  # pixels of each grid cell no tile can cover (the tile is cell - gap wide)


class JigsawModule(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = tiles.shape[0]
        features = self.backbone(tiles.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        return features, self.head(features.reshape(b, -1))


@register_objective("jigsaw")
class Jigsaw(ImageSSL):
    Params = JigsawParams
    num_views = 1

    def check(self, world_size: int) -> None:
        p = self.params
        if p.image_size // GRID - p.gap < 4:
            raise RecipeError(f"objective.image_size={p.image_size} with gap {p.gap} leaves tiles under 4 px; "
                              "raise objective.image_size or lower objective.gap")

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        self.perms = torch.from_numpy(permutation_set(p.permutations, self.recipe.seed))
        head = classifier_head(TILES * backbone.dim, p.hidden_dim, p.permutations)
        return JigsawModule(backbone, head)

    def puzzle(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shuffled tiles ``[B, 9, C, t, t]``, permutation labels ``[B]``): slot j holds the tile of cell
        ``perms[label][j]``. Offsets and labels come from torch's RNG (seeded per step by the trainer)."""
        p = self.params
        cell = images.shape[-1] // GRID
        tile = cell - p.gap
        jitter = torch.randint(p.gap + 1, (images.shape[0], TILES, 2))
        tiles = cut_tiles(images, tile, jitter)
        labels = torch.randint(p.permutations, (images.shape[0],))
        order = self.perms[labels].to(images.device)
        shuffled = tiles.gather(1, order.view(-1, TILES, 1, 1, 1).expand_as(tiles))
        return shuffled, labels.to(images.device)

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor | None) -> dict[str, torch.Tensor]:
        tiles, labels = self.puzzle(view1)
        features, logits = module(tiles)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "permutation_accuracy": accuracy,
                "embedding": features.detach().reshape(view1.shape[0], TILES, -1).mean(dim=1)}
