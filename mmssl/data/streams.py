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
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from mmssl.data.streaming import SampleStream
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


def round_robin_pick(current: list[float], shares: list[float]) -> int:
    """One step of smooth weighted round-robin: credit every stream its share, pick the most credited (the
    lowest index on a tie), debit it the total. `current` (the credits) is updated in place."""
    for j, share in enumerate(shares):
        current[j] += share
    pick = max(range(len(shares)), key=lambda j: (current[j], -j))
    current[pick] -= sum(shares)
    return pick


def interleave(shares: list[float], steps: int) -> list[int]:
    """Smooth weighted round-robin: a fixed order of `steps` stream indices that visits each in proportion to
    its share, as evenly spread as possible (each prefix is within one visit of the exact proportion)."""
    current = [0.0] * len(shares)
    return [round_robin_pick(current, shares) for _ in range(steps)]


class StreamSchedule:
    """Which streams each step of an epoch uses, and each stream's round count at that step."""

    def __init__(self, streams: list[Stream], strategy: Strategy, batch_size: int, world_size: int, seed: int):
        self.streams, self.strategy, self.batch_size, self.world_size, self.seed = streams, strategy, batch_size, world_size, seed
        self.rounds = []  # rounds in one pass over each stream
        for stream in streams:
            per_pass = stream.rows // (batch_size * world_size)
            if per_pass == 0:
                raise DataError(f"objective {stream.label!r}: {stream.rows} training examples do not fill one step of "
                                f"train.batch_size={batch_size} x {world_size} process(es); add data or lower the batch size")
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
            lists: list[list[tuple[int, int, int]]] = [[] for _ in range(s.world_size)]
            for stream, count in step:
                pass_, round_ = divmod(count, s.rounds[stream])
                perm = self._perm(stream, pass_)
                for process in range(s.world_size):
                    start = (round_ * s.world_size + process) * b
                    lists[process].extend((stream, pass_, row) for row in perm[start : start + b].tolist())
            yield from lists

    def __len__(self) -> int:
        return self.schedule.steps_per_epoch * self.schedule.world_size


class StreamsDataset(Dataset):
    """The streams' datasets behind one key space: key (stream, pass, row) -> (stream, pass, that row)."""

    def __init__(self, datasets: list):
        self.datasets = datasets

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int, int]):
        stream, pass_, row = key
        return stream, pass_, self.datasets[stream][row]


class MixedStream(IterableDataset):
    """The streamed form of a combined recipe: its objectives' sample streams as one stream of whole steps.

    Step k draws ``batch_size`` samples from each objective it runs (``sum``: all; ``alternate``: the smooth
    weighted round-robin's k-th pick; ``sample``: a draw seeded by (seed, k)) and collates them with that
    objective's collate, so every process runs the same objectives at step k. With W loader workers, worker w
    makes steps w, w + W, ... from its own shards (the loader returns them in step order). The state is each
    objective's stream position plus this worker's next step and round-robin credits: resume is exact."""

    batched = True  # items are whole steps: the trainer's loader takes them one at a time

    def __init__(self, streams: dict[str, SampleStream], collates: dict[str, Callable[[list], Any]],
                 shares: list[float], strategy: Strategy, batch_size: int, seed: int):
        self.streams, self.collates, self.shares = streams, collates, shares
        self.strategy, self.batch_size, self.seed = strategy, batch_size, seed
        self.labels = list(streams)
        self.step: int | None = None  # the next step this worker makes (None: its worker id, at the start)
        self.credits, self.credited = [0.0] * len(shares), 0  # round-robin credits after `credited` steps

    def place(self, rank: int, world_size: int) -> None:
        for stream in self.streams.values():
            stream.place(rank, world_size)

    @property
    def num_samples(self) -> int | None:
        """Samples of an epoch, as `StreamSchedule` counts it (the longest stream for ``sum``, else all)."""
        sizes = [s.num_samples for s in self.streams.values()]
        if any(n is None for n in sizes):
            return None
        return max(sizes) if self.strategy == "sum" else sum(sizes)  # type: ignore[type-var,arg-type]

    def local_shards(self) -> int:
        return sum(s.local_shards() for s in self.streams.values())

    def picks(self, step: int) -> list[int]:
        """The objectives (indices) that step `step` runs."""
        if self.strategy == "sum":
            return list(range(len(self.labels)))
        if self.strategy == "sample":
            p = np.asarray(self.shares, dtype=np.float64)
            return [int(np.random.default_rng([self.seed, step, 41]).choice(len(p), p=p / p.sum()))]
        pick = -1
        while self.credited <= step:  # advanced over every step, the other workers' too
            pick = round_robin_pick(self.credits, self.shares)
            self.credited += 1
        return [pick]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        index, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        if self.step is None:
            self.step = index
        samples = {label: iter(stream) for label, stream in self.streams.items()}
        while True:
            parts, passes = {}, {}
            for j in self.picks(self.step):
                label = self.labels[j]
                rows = [row for _, row in zip(range(self.batch_size), samples[label])]
                if len(rows) < self.batch_size:
                    return  # that stream has no usable sample left: the trainer reports it
                parts[label] = self.collates[label](rows)
                passes[label] = self.streams[label].position.passes
            self.step += workers
            yield {"parts": parts, "passes": passes}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "credits": list(self.credits), "credited": self.credited,
                "streams": {label: stream.state_dict() for label, stream in self.streams.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.credits, self.credited = state["step"], list(state["credits"]), state["credited"]
        for label, stream in self.streams.items():
            stream.load_state_dict(state["streams"][label])
