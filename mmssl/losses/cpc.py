"""Contrastive predictive coding for images (van den Oord, Li & Vinyals 2018, "Representation Learning with
Contrastive Predictive Coding"; Hénaff et al. 2019, "Data-Efficient Image Recognition with Contrastive Predictive
Coding"): an image is cut into an overlapping grid of patches, each patch is encoded on its own, a context
network that sees only the rows at and above row r summarises them, and for each offset k a linear map of the
context at (r, c) must pick out the embedding of the patch at (r + k, c) among every patch of the batch
(InfoNCE, the shared :func:`mmssl.losses.contrastive.info_nce`).

The pure parts live here: cutting the patch grid, the causal (top-to-bottom) convolution the context network
is built from, and the loss of one offset."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.losses.contrastive import info_nce


def grid_size(image_size: int, patch_size: int, stride: int) -> int:
    """Patches per side of the grid cut from an `image_size` image (``(S - P) / stride + 1``)."""
    return (image_size - patch_size) // stride + 1


def extract_patches(images: Tensor, patch_size: int, stride: int) -> Tensor:
    """``[B, G, G, C, P, P]``: the patch at grid row r, column c of `images` ``[B, C, S, S]`` is
    ``images[:, :, r * stride : r * stride + P, c * stride : c * stride + P]`` (``G = grid_size(S, P, stride)``;
    pixels beyond the last full patch are left out)."""
    patches = images.unfold(2, patch_size, stride).unfold(3, patch_size, stride)  # [B, C, G, G, P, P]
    return patches.permute(0, 2, 3, 1, 4, 5)


class CausalRowConv(nn.Conv2d):
    """A 2-D convolution over a ``[B, C, G, G]`` grid whose output at row r sees input rows ``r - (kh - 1) .. r``
    only (padded above, never below) and columns ``c - kw // 2 .. c + kw // 2``: stacked, the output at row r
    depends on the rows at and above r, never on a row below (the PixelCNN-style ordering of CPC's context)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_rows: int = 2, kernel_cols: int = 3):
        if kernel_cols % 2 != 1:
            raise ValueError(f"kernel_cols must be odd (centred on the column), got {kernel_cols}")
        super().__init__(in_channels, out_channels, (kernel_rows, kernel_cols), padding=0)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        # F.pad's order: (left, right, top, bottom)
        return super().forward(F.pad(x, (kw // 2, kw // 2, kh - 1, 0)))


def offset_loss(predictions: Tensor, targets: Tensor, offset: int, temperature: float = 1.0,
                normalize: bool = False) -> Tensor:
    """InfoNCE of offset `offset` (mean over the queries): ``predictions[b, r, c]`` (``[B, G, G, D]``, the
    offset's linear map of the context at (r, c), for rows ``r < G - offset``) scores every patch embedding of
    the batch (``targets`` ``[B, G, G, D]``); the positive is ``targets[b, r + offset, c]``, every other patch
    (of the same image or another) is a negative.

    The columns are ordered so that the query's positive is its own row of ``keys`` (the rows ``offset..G-1`` of
    every image, in the queries' order), and the remaining patches (rows ``0..offset-1``) come after as extra
    negatives: every patch of the batch is a column exactly once, with no mask."""
    b, g, _, d = targets.shape
    if not 1 <= offset < g:
        raise ValueError(f"offset {offset} must be between 1 and grid rows - 1 = {g - 1}")
    queries = predictions[:, : g - offset].reshape(-1, d)
    keys = targets[:, offset:].reshape(-1, d)
    rest = targets[:, :offset].reshape(-1, d)
    return info_nce(queries, keys, extra_negatives=rest, temperature=temperature, normalize=normalize)
