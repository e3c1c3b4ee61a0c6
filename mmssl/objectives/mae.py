"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"), the vision
counterpart of BERT's masked LM: a timm ViT encoder sees a random 25% of the patches only; a light transformer
decoder, given the encoded visible patches and a mask token at every other position, reconstructs the
(per-patch normalised) pixels of the masked patches, and only those count in the loss. Initialised as the paper's
code does (fixed 2-D sine-cosine position embeddings in encoder and decoder, Xavier-uniform linear layers and patch
embedding); a `model.pretrained` encoder keeps its weights. The exported backbone is the plain timm ViT (no
masking at inference)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from torch import nn

from mmssl.data.image_views import TwoViewsConfig
from mmssl.errors import RecipeError
from mmssl.losses.reconstruction import masked_patch_loss, patchify
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import PositiveInt, Range


def _mae_views() -> TwoViewsConfig:
    return TwoViewsConfig(preset="none", random_resized_crop=True, crop_scale=[0.2, 1.0], horizontal_flip=0.5)


@dataclass
class MAEParams(ImageSSLParams):
    views: TwoViewsConfig = field(default_factory=_mae_views)
    mask_ratio: Annotated[float, Range(0, 1, open_low=True, open_high=True)] = 0.75
    decoder_dim: PositiveInt = 128
    decoder_depth: PositiveInt = 2
    decoder_heads: PositiveInt = 4
    norm_pix: bool = True
    paper_init: bool = True  # False: timm's ViT initialisation and learned position embeddings


def sincos_position_embedding(dim: int, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine embedding ``[1, prefix + rows*cols, dim]`` (zeros for the prefix tokens): half
    of the channels encode a patch's column, half its row, each as sines and cosines of 10000^(-k / (dim/4))."""
    if dim % 4:
        raise RecipeError(f"MAE's sine-cosine position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = grid
    cells = torch.arange(rows * cols)

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position.double()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cells % cols), encode(cells // cols)], dim=1).float()
    return torch.cat([torch.zeros(prefix, dim), table]).unsqueeze(0)


def xavier_init(module: nn.Module) -> None:
    """The MAE code's initialisation: Xavier-uniform weights and zero biases for linear layers."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class MAEModule(nn.Module):
    def __init__(self, backbone: Backbone, p: MAEParams, fresh_encoder: bool = True):
        super().__init__()
        from timm.models.vision_transformer import Block

        vit = backbone.model
        self.backbone = backbone
        self.patch = int(vit.patch_embed.patch_size[0])
        self.prefix = int(vit.num_prefix_tokens)
        width, patches = int(vit.embed_dim), int(vit.patch_embed.num_patches)
        self.decoder_embed = nn.Linear(width, p.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, p.decoder_dim))
        grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        if p.paper_init:
            self.decoder_pos = nn.Parameter(sincos_position_embedding(p.decoder_dim, grid, self.prefix),
                                            requires_grad=False)
        else:
            self.decoder_pos = nn.Parameter(torch.randn(1, self.prefix + patches, p.decoder_dim) * 0.02)
        self.decoder = nn.Sequential(*[Block(p.decoder_dim, p.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                       for _ in range(p.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(p.decoder_dim)
        self.predict = nn.Linear(p.decoder_dim, self.patch * self.patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        if p.paper_init:
            xavier_init(nn.ModuleList([self.decoder_embed, self.decoder, self.predict]))
            if fresh_encoder:
                self.init_encoder(grid)

    def init_encoder(self, grid: tuple[int, int]) -> None:
        """A fresh timm ViT as MAE's code initialises it (its position embedding fixed, not learned)."""
        vit = self.backbone.model
        with torch.no_grad():
            vit.pos_embed.copy_(sincos_position_embedding(vit.pos_embed.shape[-1], grid, self.prefix))
        vit.pos_embed.requires_grad_(False)
        xavier_init(vit.blocks)
        weight = vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))
        if getattr(vit, "cls_token", None) is not None:
            nn.init.normal_(vit.cls_token, std=0.02)

    def encode_visible(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encoder states of the prefix tokens and the patches `keep` ``[B, K]`` (the encoder sees nothing else)."""
        vit = self.backbone.model
        tokens = vit.patch_embed(images) + vit.pos_embed[:, self.prefix :]
        visible = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        if self.prefix:
            cls = (vit.cls_token + vit.pos_embed[:, : self.prefix]).expand(images.shape[0], -1, -1)
            visible = torch.cat([cls, visible], dim=1)
        return vit.norm(vit.blocks(vit.norm_pre(visible)))

    def forward(self, images: torch.Tensor, noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, ...]:
        b, n = noise.shape
        keep_count = max(1, int(n * (1 - mask_ratio)))
        order = noise.argsort(dim=1)
        keep = order[:, :keep_count]
        encoded = self.encode_visible(images, keep)
        hidden = self.decoder_embed(encoded)
        full = self.mask_token.expand(b, n, -1).clone()
        full.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]), hidden[:, self.prefix :])
        full = torch.cat([hidden[:, : self.prefix], full], dim=1) + self.decoder_pos
        prediction = self.predict(self.decoder_norm(self.decoder(full)))[:, self.prefix :]
        mask = torch.ones(b, n, device=images.device)
        mask.scatter_(1, keep, 0.0)
        return prediction, mask, encoded


@register_objective("mae")
class MAE(ImageSSL):
    Params = MAEParams
    num_views = 1

    def build_module(self, backbone: Backbone) -> nn.Module:
        vit = backbone.model
        if backbone.library != "timm" or not all(hasattr(vit, a) for a in ("patch_embed", "pos_embed", "blocks")):
            raise RecipeError("objective mae needs a timm ViT backbone: set model.arch to e.g. vit_tiny_patch16_224 "
                              "(model.config: {img_size: 32, patch_size: 4} for small images)")
        if getattr(vit, "no_embed_class", False) or getattr(vit, "dynamic_img_size", False):
            raise RecipeError("objective mae needs a ViT whose position embedding covers its class token and a fixed "
                              "image size (timm's default ViTs)")
        return MAEModule(backbone, self.params, fresh_encoder=not self.recipe.model.pretrained)

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        images = batch["view1"]
        core = self.core(module)
        patches = (images.shape[-1] // core.patch) ** 2
        noise = torch.rand(images.shape[0], patches, device=images.device)
        prediction, mask, encoded = module(images, noise, p.mask_ratio)
        loss = masked_patch_loss(prediction, patchify(images.float(), core.patch), mask, p.norm_pix)
        return {"loss": loss, "embedding": encoded[:, 0].detach()}
