"""Masked image modelling's loss (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): mean
squared error of predicted patch pixels, over the masked patches only, with each target patch optionally
normalised by its own mean and variance (`norm_pix`)."""

from __future__ import annotations

from torch import Tensor


def patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, (H / p) * (W / p), p * p * C]`` in row-major patch order (as a ViT's patch
    embedding reads them)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def masked_patch_loss(prediction: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MSE between `prediction` and `target` ``[B, N, P]`` averaged over the patches where `mask` ``[B, N]`` is
    1 (masked); visible patches do not count."""
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (prediction.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)
