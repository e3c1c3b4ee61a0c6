"""A memory bank (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"):
one L2-normalised feature per training example, updated by momentum when the example is seen again, and a
source of sampled negatives. It is a buffer of the module, so checkpoints hold it and a resume restores it
exactly; on several processes every process holds the whole bank and applies every process's updates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.losses.negatives import gather_no_grad


class MemoryBank(nn.Module):
    def __init__(self, size: int, dim: int, momentum: float = 0.5, seed: int = 0):
        super().__init__()
        if size < 2:
            raise ValueError(f"a memory bank needs at least 2 entries, got {size}")
        generator = torch.Generator().manual_seed(seed)
        # uniform random unit vectors, as the paper's initialisation (no example has been seen yet)
        self.register_buffer("features", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.momentum = momentum

    def __len__(self) -> int:
        return self.features.shape[0]

    def get(self, index: Tensor) -> Tensor:
        return self.features[index]

    def sample(self, count: int, num: int, device: torch.device | None = None) -> Tensor:
        """``[count, num]`` entry indices drawn uniformly with replacement (torch's global RNG: seeded per step
        by the trainer, so a resumed run draws the same)."""
        return torch.randint(len(self), (count, num), device=device or self.features.device)

    @torch.no_grad()
    def update(self, index: Tensor, features: Tensor, gather: bool = True) -> None:
        """``bank[i] = normalise(m * bank[i] + (1 - m) * f)`` for every (i, f), from every process if `gather`.
        An index seen twice in one update (not with the trainer's samplers) keeps one of its features."""
        if gather:
            index, features = gather_no_grad(index), gather_no_grad(features.detach())
        blended = self.momentum * self.features[index] + (1 - self.momentum) * features.detach().to(self.features.dtype)
        self.features[index] = F.normalize(blended, dim=1)
