"""GradCache: contrastive losses over large batches in small memory.

Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup". The loss needs every embedding of the batch, but the encoder activations only of one chunk
at a time:

1. embed every chunk of every tower without gradient (recording the RNG state per chunk);
2. compute the full-batch loss on the detached embeddings (which require grad) and backpropagate
   to get ``d loss / d embedding`` (and the gradients of parameters inside the loss, e.g. a
   learnable temperature);
3. re-run each chunk *with* gradient, RNG restored so dropout masks match step 1, and call
   ``embedding.backward(cached_grad)``.

The parameter gradients equal those of the uncached computation (the same chunks embedded with
grad, then the loss) up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["cached_contrastive_backward", "split_batch", "RandState"]

EncodeFn = Callable[[Any], Tensor]


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


class RandState:
    """CPU and CUDA RNG state captured before a chunk's first forward, restored for its re-forward."""

    def __init__(self, *inputs: Any) -> None:
        self.cpu_state = torch.get_rng_state()
        self.cuda_devices: list[int] = []
        self.cuda_states: list[Tensor] = []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            devices = {t.device.index for t in _tensors(inputs) if t.is_cuda}
            devices.add(torch.cuda.current_device())
            self.cuda_devices = sorted(d for d in devices if d is not None)
            self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Run the block with the captured RNG state; the global RNG is unchanged afterwards."""
        with torch.random.fork_rng(devices=self.cuda_devices, enabled=True):
            torch.set_rng_state(self.cpu_state)
            for d, s in zip(self.cuda_devices, self.cuda_states):
                torch.cuda.set_rng_state(s, d)
            yield


def split_batch(batch: Any, chunk_size: int) -> list[Any]:
    """Split a tensor, a dict of tensors (a tokenizer output) or a list along dim 0 into chunks."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if isinstance(batch, Tensor):
        return list(batch.split(chunk_size))
    if isinstance(batch, Mapping):
        sizes = {len(v) for v in batch.values()}
        if len(sizes) != 1:
            raise ValueError(f"all values of the batch must have the same length, got lengths {sorted(sizes)}")
        n = sizes.pop()

        def sub(i: int) -> Any:
            part = {k: v[i : i + chunk_size] for k, v in batch.items()}
            try:  # keep dict subclasses such as transformers' BatchEncoding
                return type(batch)(part)
            except TypeError:
                return part

        return [sub(i) for i in range(0, n, chunk_size)]
    if isinstance(batch, Sequence):
        return [batch[i : i + chunk_size] for i in range(0, len(batch), chunk_size)]
    raise ValueError(f"cannot split a batch of type {type(batch).__name__}: use a tensor, a dict of tensors or a list")


def cached_contrastive_backward(
    loss_fn: Callable[..., Tensor],
    towers: Sequence[tuple[EncodeFn, Sequence[Any]]],
    *,
    preserve_rng: bool = True,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """One GradCache step: fills ``.grad`` of the encoders (and of ``loss_fn``'s parameters).

    Args:
        loss_fn: ``loss_fn(emb_0, emb_1, ...) -> scalar`` on the full-batch embeddings of each tower, in
            the order of ``towers``; e.g. ``lambda q, p, n: info_nce(q, p, extra_negatives=n)``. It may
            gather across processes (:func:`mmssl.distributed.gather_with_grad`): the gathered gradient flows
            back to the local embeddings in step 2.
        towers: one ``(encode_fn, chunks)`` per tower (query, positive, negatives, image, text...).
            ``encode_fn(chunk) -> [n, D]``; ``chunks`` are the mini-batches (see :func:`split_batch`).
            Several towers may share one encoder (SimCSE).
        preserve_rng: restore each chunk's RNG state for its re-forward so dropout masks match (the
            point of exact gradients). Disable only for deterministic encoders.
        no_sync: a context-manager factory such as ``model.no_sync`` or ``lambda: accelerator.no_sync(model)``,
            entered for every re-forward except the very last, so DDP all-reduces gradients once. The
            last chunk (last tower) must then reach every trainable DDP parameter; otherwise leave it
            ``None`` (every backward all-reduces, which is also correct, only slower).
        backward: how to backpropagate the full-batch loss of step 2 (default ``loss.backward()``), e.g. a
            trainer's backward that checks the loss is finite and scales it for gradient accumulation or
            mixed precision; the scaling then reaches the encoders through the cached gradients.

    Returns:
        The detached loss value.

    Caveats: BatchNorm running statistics are updated twice (steps 1 and 3); encoders must return a
    tensor per chunk; RNG restoration covers CPU and CUDA generators.
    """
    if not towers:
        raise ValueError("cached_contrastive_backward needs at least one tower (encode_fn, chunks)")
    for t, tower in enumerate(towers):
        if not (isinstance(tower, (tuple, list)) and len(tower) == 2 and callable(tower[0])):
            raise ValueError(f"tower {t} must be a pair (encode_fn, chunks), got {type(tower).__name__}")
        if len(tower[1]) == 0:
            raise ValueError(f"tower {t} has no chunks: pass a non-empty list of mini-batches")

    # (1) embed every chunk without grad, remembering the RNG state before each forward
    embeddings: list[Tensor] = []
    states: list[list[RandState | None]] = []
    with torch.no_grad():
        for t, (encode, chunks) in enumerate(towers):
            outs, tower_states = [], []
            for chunk in chunks:
                tower_states.append(RandState(chunk) if preserve_rng else None)
                out = encode(chunk)
                if not isinstance(out, Tensor):
                    raise ValueError(f"encode_fn of tower {t} must return a tensor [n, D], got {type(out).__name__}")
                outs.append(out)
            embeddings.append(torch.cat(outs, dim=0))
            states.append(tower_states)

    # (2) full-batch loss on detached leaves -> gradient w.r.t. each embedding
    leaves = [e.detach().requires_grad_() for e in embeddings]
    loss = loss_fn(*leaves)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn must return a scalar tensor")
    if backward is None:
        loss.backward()
    else:
        backward(loss)
    grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]

    # (3) re-embed each chunk with grad and push the cached gradient through it
    jobs = [(t, i) for t, (_, chunks) in enumerate(towers) for i in range(len(chunks))]
    offsets = [0] * len(towers)
    for j, (t, i) in enumerate(jobs):
        encode, chunks = towers[t]
        chunk = chunks[i]
        last = j == len(jobs) - 1
        sync_ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        state = states[t][i]
        rng_ctx = state.restored() if state is not None else contextlib.nullcontext()
        with sync_ctx:
            with rng_ctx:
                out = encode(chunk)
            n = out.shape[0]
            g = grads[t][offsets[t] : offsets[t] + n]
            offsets[t] += n
            if out.requires_grad:
                out.backward(g.to(out.dtype))
    return loss.detach()
