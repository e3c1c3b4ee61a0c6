"""A memory bank (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"):
one L2-normalised feature per training example, updated by momentum when the example is seen again, and a
source of sampled negatives. It is a buffer of the module, so checkpoints hold it and a resume restores it
exactly.

On several processes the bank is either replicated (every process holds all rows and applies every process's
updates) or sharded: process r holds rows ``[r * n // W, (r + 1) * n // W)`` only, looks up the others' rows
through one all-reduce, and updates its own rows from every process's batch. A sharded bank draws one set of
negatives per step (`sample_shared`: each process draws its share from its own rows, then all-gather), and
replicated banks draw the same way, so both layouts train identically. Checkpoints always hold the whole bank
(the shards are gathered when saving and sliced when loading): they resume on any number of processes."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.distributed import gather_no_grad, rank, world_size


class MemoryBank(nn.Module):
    def __init__(self, size: int, dim: int, momentum: float = 0.5, seed: int = 0, sharded: bool = False):
        super().__init__()
        self.world_size, self.rank = world_size(), rank()
        if size < max(2, self.world_size):
            raise ValueError(f"a memory bank needs at least max(2, processes) entries, got {size}")
        self.size, self.momentum = size, momentum
        self.sharded = sharded and self.world_size > 1
        self.start, self.stop = self.rows_of(self.rank)
        generator = torch.Generator().manual_seed(seed)
        # uniform random unit vectors, as the paper's initialisation (no example has been seen yet); the same
        # draws whatever the layout, so a sharded bank is a slice of the replicated one
        full = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.register_buffer("features", full[self.start : self.stop].clone() if self.sharded else full)

    def rows_of(self, process: int) -> tuple[int, int]:
        """The rows process `process` holds (sharded) or draws its share of shared negatives from (both)."""
        return process * self.size // self.world_size, (process + 1) * self.size // self.world_size

    def __len__(self) -> int:
        return self.size

    @property
    def rows_held(self) -> int:
        return self.features.shape[0]

    def get(self, index: Tensor) -> Tensor:
        """The entries of `index` (global rows). Sharded: a collective call (every process, equal batch sizes)."""
        if not self.sharded:
            return self.features[index]
        wanted = gather_no_grad(index)
        rows = torch.zeros(wanted.shape[0], self.features.shape[1], dtype=self.features.dtype, device=wanted.device)
        mine = (wanted >= self.start) & (wanted < self.stop)
        rows[mine] = self.features[wanted[mine] - self.start].to(rows.device)
        dist.all_reduce(rows)  # each row is non-zero on exactly one process
        b = index.shape[0]
        return rows[self.rank * b : (self.rank + 1) * b]

    def sample(self, count: int, num: int, device: torch.device | None = None) -> Tensor:
        """``[count, num]`` entry indices drawn uniformly with replacement, per example (torch's global RNG:
        seeded per step and process by the trainer, so a resumed run draws the same). Replicated banks only."""
        if self.sharded:
            raise RuntimeError("a sharded memory bank draws shared negatives only (sample_shared)")
        return torch.randint(self.size, (count, num), device=device or self.features.device)

    def sample_shared(self, num: int) -> Tensor:
        """``[num', D]`` negatives for the whole step, num' = ceil(num / W) * W: each process draws its share
        uniformly from its own rows, then all processes gather them (a stratified uniform draw over the bank)."""
        share = math.ceil(num / self.world_size)
        index = torch.randint(self.start, self.stop, (share,), device=self.features.device)
        local = self.features[index - self.start] if self.sharded else self.features[index]
        return gather_no_grad(local)

    @torch.no_grad()
    def update(self, index: Tensor, features: Tensor, gather: bool = True) -> None:
        """``bank[i] = normalise(m * bank[i] + (1 - m) * f)`` for every (i, f), from every process if `gather`
        (a sharded bank always gathers and keeps the rows it holds). An index seen twice in one update (not
        with the trainer's samplers) keeps one of its features."""
        if gather or self.sharded:
            index, features = gather_no_grad(index), gather_no_grad(features.detach())
        if self.sharded:
            mine = (index >= self.start) & (index < self.stop)
            index, features = index[mine] - self.start, features[mine]
        blended = self.momentum * self.features[index] + (1 - self.momentum) * features.detach().to(self.features.dtype)
        self.features[index] = F.normalize(blended, dim=1)

    # checkpoints hold the whole bank whatever the layout
    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - torch's signature
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.sharded:
            destination[prefix + "features"] = self.whole()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch's signature
        key = prefix + "features"
        if self.sharded and key in state_dict and state_dict[key].shape[0] == self.size:
            state_dict[key] = state_dict[key][self.start : self.stop]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def keep_out_of_ddp(self, owner: nn.Module, name: str) -> None:
        """A sharded bank, the attribute `name` of `owner` (the module DDP wraps), is left out of DDP's broadcast
        of buffers, which would copy process 0's rows over every other process's."""
        if self.sharded:
            owner._ddp_params_and_buffers_to_ignore = [f"{name}.features"]

    def whole(self) -> Tensor:
        """All rows, gathered from the shards (a collective call)."""
        if not self.sharded:
            return self.features
        longest = max(stop - start for start, stop in map(self.rows_of, range(self.world_size)))
        padded = torch.zeros(longest, self.features.shape[1], dtype=self.features.dtype, device=self.features.device)
        padded[: self.rows_held] = self.features
        parts = gather_no_grad(padded).split(longest)
        return torch.cat([part[: stop - start] for part, (start, stop) in
                          zip(parts, map(self.rows_of, range(self.world_size)))])
