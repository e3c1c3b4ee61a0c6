"""A resumable stream of training samples, read shard by shard in DataLoader workers.

Built on two libraries: `datasets`' ``IterableDataset`` (shards split across loader workers, weighted
interleaving of sources, Hub streaming, a position ``state_dict``) and torchdata's ``StatefulDataLoader`` (worker processes and prefetching whose per-worker state is snapshotted with every
batch, so a checkpoint records exactly which samples were consumed). mmssl adds what they leave out:

* **ranks:** each process reads its own shards (``shards[rank::world]``), never every shard; a source with
  fewer shards than processes is split by example. The stream is endless (pass after pass, each with its
  own shard order by (seed, pass)), so every rank yields the same number of batches even when shards do not
  divide evenly: the trainer stops at its step count, no rank runs dry and none waits in a collective.
* **exact resume:** a checkpoint stores each worker's (pass, shard, sample) position, the samples a record
  produced that were not yet yielded (packed text blocks) and any carried state (tokens waiting to fill a
  block). With ``data.shuffle_buffer: 0`` a resumed run sees exactly the samples an uninterrupted run would
  have; with a buffer, the records waiting in it at the checkpoint are skipped (at most buffer x workers per
  process, never repeated), as `datasets`' own buffer does.
* **bad data:** a record the transform cannot use (a corrupt image, a missing caption, a malformed line, a
  truncated tar) is skipped and counted by reason; the counts travel in the worker state and are summed into
  the training log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from mmssl.data.shards import Problem, Record
from mmssl.errors import DataError

log = logging.getLogger(__name__)

STREAM_AUTO_BYTES = 128 << 20  # data.streaming=auto streams sources larger than this


class Skip(Exception):
    """A record the transform cannot use; the message is the reason (counted)."""


def sample_id(key: str) -> int:
    """A stable 63-bit id of a sample key (the same in every process and run): seeds per-sample randomness."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest(), "little") >> 1


@dataclass
class Source:
    """One streamed source: its shards, the reader that turns a shard into raw records, and its weight.

    `shards` are file paths (or any picklable shard handles the reader understands); `num_samples` is known
    when a size file lists every shard. `hub` is set instead for a Hub dataset streamed by `datasets`."""

    shards: list[Any]
    reader: Callable[[Any], Iterator[Record | Problem]] | None
    where: str
    weight: float = 1.0
    num_samples: int | None = None
    hub: tuple[str, str, str | None] | None = None  # (path, split, config name)


def _generate(shards: list[Any], reader: Callable) -> Iterator[Record]:
    for shard in shards:
        for item in reader(shard):
            if isinstance(item, Problem):
                yield {"__problem__": item.reason, "__where__": item.where}
            else:
                if isinstance(shard, str):
                    item.setdefault("__shard__", shard)  # relative image paths in a table are relative to it
                yield item


class Transform:
    """Turns one raw record into zero or more samples (raise `Skip` for an unusable record). A transform that
    carries state from record to record (text packing) overrides `state_dict`/`load_state_dict`."""

    def __call__(self, record: Record) -> list[Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class StreamPosition:
    """What a worker has consumed: its pass, `datasets`' position inside the pass, samples made but not yet
    yielded, the transform's carried state and the skip counts."""

    passes: int = 0
    source: dict | None = None
    pending: list = field(default_factory=list)
    transform: dict = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # a few skipped records, for the log


class SampleStream(IterableDataset):
    """One process's endless, resumable stream of samples; see the module docstring."""

    def __init__(self, sources: list[Source], transform: Transform, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 0, resampled: bool = False):
        if not sources:
            raise ValueError("a stream needs at least one source")
        self.sources, self.transform, self.seed = sources, transform, seed
        self.rank, self.world_size, self.shuffle_buffer, self.resampled = rank, world_size, shuffle_buffer, resampled
        self.position = StreamPosition()
        self._live = None  # the `datasets` stream of the current pass (in the iterating process)

    def place(self, rank: int, world_size: int) -> None:
        """Which process this stream feeds (set by the trainer before loader workers start)."""
        self.rank, self.world_size = rank, world_size

    def local_shards(self) -> int:
        """Shards this process reads (all of a source's, split by example, when it has fewer than processes)."""
        return sum(len(s.shards) if len(s.shards) < self.world_size else len(s.shards[self.rank :: self.world_size])
                   for s in self.sources)

    @property
    def num_samples(self) -> int | None:
        """Samples in one pass over every source (all processes together), when every source knows its size."""
        sizes = [s.num_samples for s in self.sources]
        return sum(sizes) if all(n is not None for n in sizes) else None  # type: ignore[misc]

    # -- the `datasets` stream of one pass -------------------------------------------------------
    def _source_dataset(self, index: int, source: Source, passes: int):
        import datasets
        from datasets.distributed import split_dataset_by_node

        if source.hub is not None:
            path, split, name = source.hub
            ds = datasets.load_dataset(path, name, split=split, streaming=True)
            if self.world_size > 1:
                ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
            return ds
        shards = list(source.shards)
        by_example = len(shards) < self.world_size  # too few shards to give every process its own
        if not by_example:
            shards = shards[self.rank :: self.world_size]
        rng = np.random.default_rng([self.seed, passes, index, 17])
        order = rng.integers(len(shards), size=len(shards)) if self.resampled else rng.permutation(len(shards))
        shards = [shards[i] for i in order]
        ds = datasets.IterableDataset.from_generator(_generate, gen_kwargs={"shards": shards, "reader": source.reader})
        if by_example and self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        return ds

    def _pass_dataset(self, passes: int):
        import datasets

        parts = [self._source_dataset(i, s, passes) for i, s in enumerate(self.sources)]
        seed = int(np.random.default_rng([self.seed, passes, self.rank, 29]).integers(2**31))
        if len(parts) == 1:
            ds = parts[0]
        else:
            total = sum(s.weight for s in self.sources)
            ds = datasets.interleave_datasets(parts, probabilities=[s.weight / total for s in self.sources], seed=seed,
                                              stopping_strategy="all_exhausted")
        return ds

    def _shuffled(self, records: Iterator[Record], passes: int) -> Iterator[Record]:
        """A seeded shuffle buffer of `shuffle_buffer` records (`datasets`' own loses its worker positions when
        resumed with several workers; this one loses only the records it holds at a checkpoint)."""
        worker = get_worker_info()
        rng = np.random.default_rng([self.seed, passes, self.rank, worker.id if worker else 0, 31])
        buffer: list[Record] = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], record = record, buffer[i]
            yield record
        rng.shuffle(buffer)
        yield from buffer

    # -- iteration -------------------------------------------------------------------------------
    def _skip(self, reason: str, where: str) -> None:
        skipped = self.position.skipped
        skipped[reason] = skipped.get(reason, 0) + 1
        if len(self.position.examples) < 5:
            self.position.examples.append(f"{where}: {reason}")
        if reason in ("corrupt shard", "unreadable shard"):
            log.warning("%s: %s; the samples read before it are used", where, reason)

    def __iter__(self) -> Iterator[Any]:
        position = self.position
        worker = get_worker_info()
        if position.transform:
            self.transform.load_state_dict(position.transform)
        while True:
            while position.pending:  # samples of a record that a checkpoint caught half yielded
                yield position.pending.pop(0)
            ds = self._pass_dataset(position.passes)
            resumed = position.source is not None
            if resumed:
                ds.load_state_dict(position.source)
            self._live = ds
            produced = 0
            records = self._shuffled(iter(ds), position.passes) if self.shuffle_buffer else ds
            for record in records:
                problem = record.get("__problem__")
                if problem is not None:
                    self._skip(problem, record.get("__where__", "?"))
                    continue
                try:
                    samples = self.transform(record)
                except Skip as reason:
                    self._skip(str(reason), str(record.get("__key__", "?")))
                    continue
                produced += len(samples)
                if samples:
                    position.pending = list(samples[1:])
                    yield samples[0]
                    while position.pending:
                        yield position.pending.pop(0)
            self._live = None
            position.source = None
            position.passes += 1
            if produced == 0 and not resumed:  # nothing usable in a whole pass: stop rather than spin
                who = f"process {self.rank}" + (f", loader worker {worker.id}" if worker is not None else "")
                log.warning("%s: a pass over its shards gave no usable sample (skipped: %s)", who, position.skipped)
                return

    # -- state (called by StatefulDataLoader in the process that iterates) -----------------------
    def state_dict(self) -> dict[str, Any]:
        position = self.position
        source = self._live.state_dict() if self._live is not None else position.source
        return {"passes": position.passes, "source": source, "pending": list(position.pending),
                "transform": self.transform.state_dict(), "skipped": dict(position.skipped),
                "examples": list(position.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = StreamPosition(state["passes"], state["source"], list(state["pending"]),
                                       dict(state["transform"]), dict(state["skipped"]), list(state["examples"]))


# ---------------------------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------------------------


def default_workers(on_cuda: bool) -> int:
    """Loader workers when ``train.num_workers`` is not set: on a GPU, enough to keep it fed; on a CPU one
    (decoding beside training, which already uses the cores)."""
    cores = os.cpu_count() or 1
    return min(8, max(1, cores // 2)) if on_cuda else 1


def make_loader(stream: IterableDataset, batch_size: int | None, collate: Callable, workers: int,
                pin_memory: bool = False, snapshot_every: int = 1):
    """A torchdata ``StatefulDataLoader`` over `stream`: batches of `batch_size` (None: the stream yields whole
    batches, each passed through `collate`), built in `workers` processes, whose ``state_dict()`` is the
    stream's position after the last batch it returned."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata 0.11 calls a deprecated torch API

    return StatefulDataLoader(stream, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                              pin_memory=pin_memory, persistent_workers=False, snapshot_every_n_steps=snapshot_every,
                              prefetch_factor=4 if workers else None)


def skipped_counts(loader_state: dict[str, Any]) -> tuple[dict[str, int], list[str]]:
    """Skip counts summed over a loader's workers (from its ``state_dict()``), and a few examples."""
    counts: dict[str, int] = {}
    examples: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "skipped" in node and "passes" in node:
                for reason, n in node["skipped"].items():
                    counts[reason] = counts.get(reason, 0) + n
                examples.extend(node.get("examples", []))
                return
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(loader_state)
    return counts, examples[:5]


def check_stream_shape(saved: dict[str, Any], world_size: int, workers: int, where: str) -> None:
    """Refuse a resume on another number of processes or loader workers: the saved positions are per
    (process, worker) and their shards would be assigned differently."""
    if saved.get("world") != world_size or saved.get("workers") != workers:
        raise DataError(
            f"{where} was written by {saved.get('world')} process(es) with train.num_workers={saved.get('workers')}; "
            f"this run has {world_size} process(es) and train.num_workers={workers}. A stream's position is kept per "
            "process and loader worker: resume with the same numbers (or start a new run from the checkpoint's "
            "weights with model.pretrained)"
        )
