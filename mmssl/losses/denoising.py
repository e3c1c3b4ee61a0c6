"""The denoising autoencoder's corruption and loss (Vincent, Larochelle, Bengio & Manzagol 2008, "Extracting and
Composing Robust Features with Denoising Autoencoders"): corrupt an image (masking noise: pixels set to 0;
salt-and-pepper: pixels set to 0 or 1; additive Gaussian noise, clipped to [0, 1]) and reconstruct the clean one.
The squared error can weigh corrupted pixels (alpha) and untouched ones (beta) differently, the paper's
"emphasised" denoising; alpha = beta is the plain reconstruction of every pixel."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Corruption = Literal["masking", "salt_pepper", "gaussian"]


def corrupt(images: Tensor, kind: Corruption, level: float,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(corrupted images, mask ``[B, 1, H, W]``: 1 where a pixel was corrupted) of `images` ``[B, C, H, W]`` in
    [0, 1]. `level`: the fraction of pixels masked or salted, or the Gaussian noise's standard deviation (every
    pixel is then corrupted)."""
    b, _, h, w = images.shape
    if kind == "gaussian":
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return (images + level * noise).clamp(0, 1), torch.ones(b, 1, h, w, device=images.device)
    hit = torch.rand(b, 1, h, w, generator=generator, device=images.device) < level
    if kind == "masking":
        return images.masked_fill(hit, 0.0), hit.float()
    salt = torch.rand(b, 1, h, w, generator=generator, device=images.device) < 0.5
    value = salt.to(images.dtype).expand_as(images)
    return torch.where(hit, value, images), hit.float()


def denoising_loss(prediction: Tensor, clean: Tensor, corrupted: Tensor, corrupted_weight: float = 1.0,
                   untouched_weight: float = 1.0) -> Tensor:
    """Mean over pixels of the squared error (averaged over the channels) between
    `prediction` and `clean` ``[B, C, H, W]``, each pixel weighted by `corrupted_weight` where `corrupted`
    ``[B, 1, H, W]`` is 1 and `untouched_weight` elsewhere."""
    per_pixel = (prediction.float() - clean.float()).pow(2).mean(dim=1, keepdim=True)
    weights = corrupted * corrupted_weight + (1 - corrupted) * untouched_weight
    return (per_pixel * weights).mean()
