"""word2vec's negative-sampling losses (Mikolov et al. 2013), computed for a whole batch of running text at once.

A batch is a flat sequence of word ids (sentences laid end to end, each token tagged with its sentence) after
frequent-word subsampling. Every token has a reduced window ``b`` drawn from 1..window (word2vec's dynamic
window: near words count more often). Instead of materialising (centre, context) pairs, the pairs at distance
``j`` are the sequence against itself shifted by ``j``, so a batch costs a few element-wise passes over ``[N, D]``
per distance plus the negatives.

Conventions follow word2vec.c and gensim: skip-gram scores the *input* vector of the context word against the
*output* vector of the centre word and of ``negatives`` noise words drawn from the unigram distribution raised
to 0.75; CBOW scores the mean of the context words' input vectors against the centre's output vector and the
noise words'. The loss is a sum over pairs (each pair is one of word2vec's SGD updates), so the learning rate
means what gensim's ``alpha`` means.

Negatives are drawn once per context token (skip-gram) or centre (CBOW) and shared by the pairs it takes part
in, weighted by their count (``noise`` of shape ``[N, negatives]``: the same expected gradient as word2vec's
fresh draw per pair), or drawn once per batch and scored with one matrix product (``noise`` of shape ``[S]``,
each weighted ``negatives / S``: the same expectation again; a GPU's preferred shape).

The loss's gradient is known once the scores are (``d softplus(x) / dx = sigmoid(x)``), so `Word2VecLoss`
computes it in the forward pass and scatters it into the two tables (``index_put_`` with accumulation): autograd
through dozens of shifted slices would allocate and copy a full ``[N, D]`` gradient per slice."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Architecture = Literal["skipgram", "cbow"]


def keep_probabilities(counts: Tensor, sample: float) -> Tensor:
    """word2vec.c's (and gensim's) subsampling: a word of frequency f is kept with probability
    ``(sqrt(f / t) + 1) * t / f`` (at most 1), ``t = sample * total``; ``sample = 0`` keeps everything."""
    counts = counts.double()
    if sample <= 0:
        return torch.ones_like(counts, dtype=torch.float32)
    threshold = sample * counts.sum()
    return ((torch.sqrt(counts / threshold) + 1) * threshold / counts).clamp(max=1).float()


def noise_distribution(counts: Tensor, power: float = 0.75) -> Tensor:
    """The negative-sampling distribution: unigram counts raised to `power`, normalised."""
    weights = counts.double().pow(power)
    return (weights / weights.sum()).float()


def window_masks(sentence: Tensor, reduced: Tensor, window: int,
                 dtype: torch.dtype = torch.float32) -> list[tuple[int, Tensor, Tensor]]:
    """For each distance j in 1..window: (j, pairs (context i, centre i+j), pairs (context i+j, centre i)), each
    a mask ``[N - j]`` of `dtype`. A pair counts when both tokens are in one sentence and j is within the *centre's*
    reduced window (word2vec.c's rule)."""
    masks = []
    for j in range(1, min(window, sentence.numel() - 1) + 1):
        same = sentence[:-j] == sentence[j:]
        masks.append((j, (same & (reduced[j:] >= j)).to(dtype), (same & (reduced[:-j] >= j)).to(dtype)))
    return masks


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _negatives(hidden: Tensor, noise_vectors: Tensor, weight: Tensor, negatives: int,
               grad_hidden: Tensor) -> tuple[Tensor, Tensor]:
    """Loss of the noise words against `hidden` ``[N, D]``, each row weighted by `weight`; adds the gradient
    for `hidden` to `grad_hidden` and returns (loss, gradient of `noise_vectors`)."""
    if noise_vectors.ndim == 3:  # [N, K, D]: one draw per row
        scores = torch.bmm(noise_vectors, hidden.unsqueeze(2)).squeeze(2)  # [N, K]
        coef = torch.sigmoid(scores) * weight[:, None]
        grad_hidden += torch.bmm(coef.unsqueeze(1), noise_vectors).squeeze(1)
        return (F.softplus(scores).sum(1) * weight).sum(), coef.unsqueeze(2) * hidden.unsqueeze(1)
    scores = hidden @ noise_vectors.T  # [N, S]: one draw per batch
    scale = weight * (negatives / noise_vectors.shape[0])
    coef = torch.sigmoid(scores) * scale[:, None]
    grad_hidden += coef @ noise_vectors
    return (F.softplus(scores).sum(1) * scale).sum(), coef.T @ hidden


def _skipgram(w_in: Tensor, w_out: Tensor, masks, noise_vectors: Tensor, negatives: int):
    grad_in, grad_out = torch.zeros_like(w_in), torch.zeros_like(w_out)
    uses = w_in.new_zeros(w_in.shape[0])  # pairs in which each token is the context
    loss = w_in.new_zeros(())
    for j, first, second in masks:
        for ctx, centre, mask in ((slice(None, -j), slice(j, None), first), (slice(j, None), slice(None, -j), second)):
            scores = _rowdot(w_in[ctx], w_out[centre])
            loss += (F.softplus(-scores) * mask).sum()
            coef = (-torch.sigmoid(-scores) * mask).unsqueeze(1)
            grad_in[ctx].addcmul_(coef, w_out[centre])
            grad_out[centre].addcmul_(coef, w_in[ctx])
            uses[ctx] += mask
    negative, grad_noise = _negatives(w_in, noise_vectors, uses, negatives, grad_in)
    return loss + negative, grad_in, grad_out, grad_noise, uses.sum()


def _cbow(w_in: Tensor, w_out: Tensor, masks, noise_vectors: Tensor, negatives: int):
    context, count = torch.zeros_like(w_in), w_in.new_zeros(w_in.shape[0])
    for j, first, second in masks:  # centre i+j has context i (first); centre i has context i+j (second)
        context[j:].addcmul_(first.unsqueeze(1), w_in[:-j])
        context[:-j].addcmul_(second.unsqueeze(1), w_in[j:])
        count[j:] += first
        count[:-j] += second
    has = (count > 0).to(w_in.dtype)
    hidden = context / count.clamp(min=1).unsqueeze(1)
    scores = _rowdot(hidden, w_out)
    loss = (F.softplus(-scores) * has).sum()
    coef = (-torch.sigmoid(-scores) * has).unsqueeze(1)
    grad_hidden = coef * w_out
    grad_out = coef * hidden
    negative, grad_noise = _negatives(hidden, noise_vectors, has, negatives, grad_hidden)
    grad_hidden /= count.clamp(min=1).unsqueeze(1)  # the mean's share for each context word
    grad_in = torch.zeros_like(w_in)
    for j, first, second in masks:
        grad_in[:-j].addcmul_(first.unsqueeze(1), grad_hidden[j:])
        grad_in[j:].addcmul_(second.unsqueeze(1), grad_hidden[:-j])
    return loss + negative, grad_in, grad_out, grad_noise, has.sum()


class Word2VecLoss(torch.autograd.Function):
    """``(summed loss, positive pairs)`` of one batch, differentiable in the two tables ``[V, D]``."""

    @staticmethod
    def forward(ctx, inputs: Tensor, outputs: Tensor, ids: Tensor, sentence: Tensor, reduced: Tensor,
                noise: Tensor, window: int, negatives: int, architecture: str,
                sparse: bool) -> tuple[Tensor, Tensor]:
        masks = window_masks(sentence, reduced, window, inputs.dtype)
        step = _skipgram if architecture == "skipgram" else _cbow
        loss, grad_in, grad_out, grad_noise, pairs = step(inputs[ids], outputs[ids], masks, outputs[noise], negatives)
        ctx.save_for_backward(ids, noise, grad_in, grad_out, grad_noise)
        ctx.shapes, ctx.sparse = (inputs.shape, outputs.shape), sparse
        ctx.mark_non_differentiable(pairs)
        return loss, pairs

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_pairs: Tensor):  # noqa: ANN205
        ids, noise, grad_in, grad_out, grad_noise = ctx.saved_tensors
        out_rows = torch.cat([ids, noise.reshape(-1)])
        out_grads = torch.cat([grad_out, grad_noise.reshape(-1, grad_noise.shape[-1])]) * grad_loss
        if ctx.sparse:  # only the rows the batch touched: SGD then updates those rows alone
            d_inputs = torch.sparse_coo_tensor(ids[None], grad_in * grad_loss, ctx.shapes[0],
                                               check_invariants=False)  # ids are in range by construction
            d_outputs = torch.sparse_coo_tensor(out_rows[None], out_grads, ctx.shapes[1], check_invariants=False)
        else:  # index_put_ with accumulate: on a CPU three times faster than index_add_, whose loop pays per row
            d_inputs = grad_in.new_zeros(ctx.shapes[0]).index_put_((ids,), grad_in * grad_loss, accumulate=True)
            d_outputs = grad_out.new_zeros(ctx.shapes[1]).index_put_((out_rows,), out_grads, accumulate=True)
        return d_inputs, d_outputs, None, None, None, None, None, None, None, None


def word2vec_loss(inputs: Tensor, outputs: Tensor, ids: Tensor, sentence: Tensor, reduced: Tensor, noise: Tensor,
                  window: int, negatives: int, architecture: Architecture = "skipgram",
                  sparse: bool = False) -> tuple[Tensor, Tensor]:
    """Summed negative-sampling loss of one batch and its number of positive pairs (skip-gram) or centres with a
    context (CBOW). `inputs`, `outputs`: the two tables ``[V, D]``; `ids`, `sentence`, `reduced`: ``[N]`` word
    ids, sentence tags and reduced windows; `noise`: ``[N, negatives]`` or ``[S]`` noise word ids. `sparse`: the
    tables' gradients are sparse tensors of the touched rows (for plain SGD, which then skips the others)."""
    return Word2VecLoss.apply(inputs, outputs, ids, sentence, reduced, noise, window, negatives, architecture, sparse)
