"""Several data streams in one run (a combined recipe): which stream(s) each step draws from, and which rows.

Every batch is a pure function of (seed, epoch, step), as with one stream, so a run resumes exactly where it
stopped, every stream's position included. A stream's rows are visited in passes, each a fresh permutation
seeded by (seed, stream, pass); a stream that runs out before the run's epoch ends starts its next pass.

An *epoch* of the combined run is as many steps as the streams have rounds in all (``alternate``/``sample``) or
as the longest stream has (``sum``). A *round* is one step's worth of a stream: one batch per process. The
batch sampler yields, per step, one list of rows per process (accelerate gives the k-th list to process
k mod W), so in ``alternate``/``sample`` every process runs the same objective in a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch.utils.data import Dataset, Sampler

from mmssl.errors import DataError

Strategy = Literal["sum", "alternate", "sample"]


@dataclass(frozen=True)
class Stream:
    label: str
    rows: int  # examples in the stream's training data
    share: float  # relative frequency (alternate/sample), already raised to 1/temperature
    # streams of one group (objectives reading the same data into the same rows) visit their rows in the same
    # order, so with ``sum`` every step gives them the same examples
    group: str = ""


def interleave(shares: list[float], steps: int) -> list[int]:
    """Smooth weighted round-robin: a fixed order of `steps` stream indices that visits each in proportion to
    its share, as evenly spread as possible (each prefix is within one visit of the exact proportion)."""
    total = sum(shares)
    current = [0.0] * len(shares)
    order = []
    for _ in range(steps):
        current = [c + s for c, s in zip(current, shares)]
        pick = max(range(len(shares)), key=lambda j: (current[j], -j))
        current[pick] -= total
        order.append(pick)
    return order


class StreamSchedule:
    """Which streams each step of an epoch uses, and each stream's round count at that step."""

    def __init__(self, streams: list[Stream], strategy: Strategy, batch_size: int, world: int, seed: int):
        self.streams, self.strategy, self.batch_size, self.world, self.seed = streams, strategy, batch_size, world, seed
        self.rounds = []  # rounds in one pass over each stream
        for stream in streams:
            per_pass = stream.rows // (batch_size * world)
            if per_pass == 0:
                raise DataError(f"objective {stream.label!r}: {stream.rows} training examples do not fill one step of "
                                f"train.batch_size={batch_size} x {world} process(es); add data or lower the batch size")
            self.rounds.append(per_pass)
        self.steps_per_epoch = max(self.rounds) if strategy == "sum" else sum(self.rounds)
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        """alternate/sample: the stream of each step of `epoch`."""
        if epoch not in self._orders:
            shares = [s.share for s in self.streams]
            if self.strategy == "alternate":
                self._orders[epoch] = interleave(shares, self.steps_per_epoch)
            else:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7 * epoch + 1)
                draws = torch.multinomial(torch.tensor(shares, dtype=torch.float64), self.steps_per_epoch,
                                          replacement=True, generator=generator)
                self._orders[epoch] = draws.tolist()
        return self._orders[epoch]

    def visits(self, epoch: int) -> list[int]:
        """Rounds each stream takes in `epoch`."""
        if self.strategy == "sum":
            return [self.steps_per_epoch] * len(self.streams)
        counts = [0] * len(self.streams)
        for j in self.order(epoch):
            counts[j] += 1
        return counts

    def epoch_steps(self, epoch: int) -> Iterator[list[tuple[int, int]]]:
        """Per step of `epoch`: (stream, round count since the run began) of each stream it draws from."""
        done = [0] * len(self.streams)
        if self.strategy == "alternate" or self.strategy == "sum":
            done = [v * epoch for v in self.visits(0)]  # the same visits every epoch
        else:
            for earlier in range(epoch):
                done = [d + v for d, v in zip(done, self.visits(earlier))]
        if self.strategy == "sum":
            for _ in range(self.steps_per_epoch):
                yield [(j, done[j]) for j in range(len(self.streams))]
                done = [d + 1 for d in done]
            return
        for j in self.order(epoch):
            yield [(j, done[j])]
            done[j] += 1


class StreamBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Per step, one list per process of (stream, pass, row) keys; `StreamsDataset` resolves them."""

    def __init__(self, schedule: StreamSchedule):
        self.schedule = schedule
        self.epoch = 0
        self._perms: dict[int, tuple[int, torch.Tensor]] = {}  # per group's first stream: its latest pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _perm(self, stream: int, pass_: int) -> torch.Tensor:
        """The row order of a stream's pass; one kept per stream group (a stream's passes only move forward)."""
        streams = self.schedule.streams
        first = next(j for j, s in enumerate(streams) if s.group == streams[stream].group and s.rows == streams[stream].rows)
        cached = self._perms.get(first)
        if cached is None or cached[0] != pass_:
            generator = torch.Generator().manual_seed((self.schedule.seed * 100_003 + pass_) * 7_919 + first)
            cached = (pass_, torch.randperm(streams[stream].rows, generator=generator))
            self._perms[first] = cached
        return cached[1]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        s = self.schedule
        b = s.batch_size
        for step in s.epoch_steps(self.epoch):
            lists: list[list[tuple[int, int, int]]] = [[] for _ in range(s.world)]
            for stream, count in step:
                pass_, round_ = divmod(count, s.rounds[stream])
                perm = self._perm(stream, pass_)
                for process in range(s.world):
                    start = (round_ * s.world + process) * b
                    lists[process].extend((stream, pass_, row) for row in perm[start : start + b].tolist())
            yield from lists

    def __len__(self) -> int:
        return self.schedule.steps_per_epoch * self.schedule.world


class StreamsDataset(Dataset):
    """The streams' datasets behind one key space: key (stream, pass, row) -> (stream, pass, that row)."""

    def __init__(self, datasets: list):
        self.datasets = datasets

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int, int]):
        stream, pass_, row = key
        return stream, pass_, self.datasets[stream][row]
