"""Counter-based random numbers for views: every number is a splitmix64 hash of (seed, epoch, row, view, draw),
so a row's view depends on nothing else (not its batch, the process, a resume or the device)."""

from __future__ import annotations

import torch


# splitmix64 on int64 tensors: multiplication wraps modulo 2**64, as unsigned arithmetic would; shifts are made
# logical by masking.
def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser of ``z + golden``, elementwise on an int64 tensor."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


class ViewDraws:
    """The columns of one view's draws (`view_uniforms`): crop area and aspect tries, crop position, then one
    number per decision."""

    CROP_TRIES = 10
    AREA, ASPECT = 0, CROP_TRIES  # each CROP_TRIES columns wide
    X, Y = 2 * CROP_TRIES, 2 * CROP_TRIES + 1
    FLIP, JITTER, BRIGHT, CONTRAST, SAT, HUE, GRAY, BLUR, SIGMA, SOLARIZE = range(Y + 1, Y + 11)
    COUNT = Y + 11


def view_uniforms(rows: torch.Tensor, epoch: int, seed: int, view: int, draws: int = ViewDraws.COUNT) -> torch.Tensor:
    """Uniform numbers in [0, 1), ``[B, draws]``: a pure function of (seed, epoch, row, view, draw)."""
    z = mix64(torch.full_like(rows, int(seed) & ((1 << 63) - 1), dtype=torch.long))
    z = mix64(z ^ int(epoch))
    z = mix64(z ^ rows.long())
    z = mix64(z ^ int(view))
    z = mix64(z.unsqueeze(1) ^ torch.arange(draws, device=rows.device))
    return _shr(z, 40).float() / float(1 << 24)  # top 24 bits: exact in float32
