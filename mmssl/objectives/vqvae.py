"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning"): a convolutional
encoder maps an image to an h x w grid of vectors, each replaced by its nearest code of a learnt codebook
(`mmssl.losses.vector_quantize`: straight-through gradient, commitment loss, EMA codebook, dead-code restarts),
and a convolutional decoder rebuilds the image from the codes. Loss: pixel MSE (images in [0, 1]) +
``commitment_beta`` x commitment.

The encoder is a timm backbone's feature map (``forward_features``: a small-stem ResNet at 32 px gives 4 x 4),
projected to ``code_dim`` by a 1 x 1 convolution; the decoder upsamples the code grid back to ``image_size`` with
stride-2 transposed convolutions. Evaluation probes the backbone (the pre-quantisation feature map, average
pooled) with the image-SSL base's kNN / linear probe against its random init, and adds the codebook's usage on
the eval images (``codebook_perplexity``: exp of the codes' entropy; ``codes_used``) and their reconstruction
error (``reconstruction_mse``, pixels in [0, 1]).

Codebook collapse: when the perplexity on the eval images is below ``collapse_fraction`` x ``codebook_size``, the
evaluation logs a warning and records ``codebook_collapsed: 1``; the export still happens (the weights explain
the failure) but says so in ``vqvae_config.json``, ``mmssl_image_eval.json`` and metrics.json (``eval``), from
which the model card states it.

Export: the backbone as its library's folder (timm), like every image method, plus ``vqvae.safetensors`` (the
1 x 1 projection, the codebook and the decoder) and ``vqvae_config.json``; `load_vqvae` rebuilds the whole
model (encode images to code grids, decode code grids to images), which the second stage -- an autoregressive
prior over the code sequences (``scripts/vqvae_prior.py``, the ``clm`` objective) -- uses.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.data.image_views import TwoViewsConfig, eval_view
from mmssl.errors import MmsslError, RecipeError
from mmssl.losses.vector_quantize import VectorQuantizer, code_counts, nearest_codes, perplexity
from mmssl.models.image_features import precise_bn
from mmssl.models.vision import Backbone, load_backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, NonNegativeInt, PositiveInt, Range

log = logging.getLogger(__name__)

CONFIG_FILE = "vqvae_config.json"
WEIGHTS_FILE = "vqvae.safetensors"


def _mild_views() -> TwoViewsConfig:
    # reconstruction is the task: crops and flips only add data
    return TwoViewsConfig(preset="none", random_resized_crop=True, crop_scale=[0.5, 1.0], horizontal_flip=0.5)


@dataclass
class VQVAEParams(ImageSSLParams):
    views: TwoViewsConfig = field(default_factory=_mild_views)
    codebook_size: Annotated[int, Range(2)] = 128  # K codes
    code_dim: PositiveInt = 32  # D: each code's dimension
    commitment_beta: NonNegativeFloat = 0.25  # the paper's beta
    ema_decay: Annotated[float, Range(0, 1, open_high=True)] = 0.99  # of the codebook's moving averages
    ema_eps: Annotated[float, Range(0, 1, open_low=True)] = 1e-5  # Laplace smoothing of the code counts
    restart_after: NonNegativeInt = 100  # a code unused this many training steps in a row is restarted; 0: never
    decoder_channels: PositiveInt = 64  # width of the decoder's first layer (halved at each upsampling, >= 16)
    # collapse: codebook perplexity on the eval images below this fraction of codebook_size
    collapse_fraction: Annotated[float, Range(0, 1)] = 0.05


def build_decoder(code_dim: int, channels: int, upsamples: int) -> nn.Sequential:
    """Code grid ``[B, D, h, w]`` -> image ``[B, 3, h * 2^upsamples, ...]`` (pixels in [0, 1], unbounded)."""
    layers: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, padding=1), nn.ReLU()]
    for _ in range(upsamples):
        out = max(channels // 2, 16)
        layers += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1), nn.ReLU()]
        channels = out
    layers.append(nn.Conv2d(channels, 3, 3, padding=1))
    return nn.Sequential(*layers)


def feature_grid(backbone: Backbone, image_size: int) -> tuple[int, int]:
    """(channels, side) of the backbone's feature map for `image_size` images; a clear error for a backbone without
    a spatial map."""
    if backbone.library != "timm" or not hasattr(backbone.model, "forward_features"):
        raise RecipeError(f"objective 'vqvae' quantises a timm backbone's feature map; model.arch {backbone.arch!r} "
                          f"({backbone.library}) has none: use a timm CNN such as resnet18")
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        fmap = backbone.model.forward_features(torch.zeros(1, 3, image_size, image_size))
    backbone.train(was_training)
    if fmap.ndim != 4 or fmap.shape[-1] != fmap.shape[-2]:
        raise RecipeError(f"objective 'vqvae' needs a square [B, C, h, w] feature map; {backbone.arch!r} gives shape "
                          f"{list(fmap.shape)}: use a timm CNN such as resnet18")
    return int(fmap.shape[1]), int(fmap.shape[-1])


def codebook_usage(counts: torch.Tensor, collapse_fraction: float, what: str = "the eval images") -> dict[str, float]:
    """Codebook usage from the code counts ``[K]`` over `what`: perplexity, codes used, and whether the codebook
    collapsed (perplexity below `collapse_fraction` x K), which is logged as a warning."""
    size = len(counts)
    ppl, used = float(perplexity(counts)), int((counts > 0).sum())
    collapsed = ppl < collapse_fraction * size
    if collapsed:
        log.warning("the VQ codebook has collapsed: perplexity %.2f on %s (%d of %d codes used), below "
                    "objective.collapse_fraction=%g x %d codes; recorded as codebook_collapsed in metrics.json and "
                    "the export's vqvae_config.json", ppl, what, used, size, collapse_fraction, size)
    return {"codebook_perplexity": ppl, "codes_used": float(used), "codebook_size": float(size),
            "codebook_collapsed": float(collapsed)}


class VQVAEModule(nn.Module):
    """Backbone (``.backbone``) -> 1 x 1 projection -> quantiser -> decoder."""

    def __init__(self, backbone: nn.Module, feature_dim: int, code_dim: int, codebook_size: int, upsamples: int,
                 decoder_channels: int, decay: float = 0.99, eps: float = 1e-5, restart_after: int = 100):
        super().__init__()
        self.backbone = backbone
        self.pre_quant = nn.Conv2d(feature_dim, code_dim, 1)
        self.quantizer = VectorQuantizer(codebook_size, code_dim, decay, eps, restart_after)
        self.decoder = build_decoder(code_dim, decoder_channels, upsamples)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> the pre-quantisation grid ``[B, D, h, w]``."""
        return self.pre_quant(self.backbone.model.forward_features(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(images)
        b, d, h, w = z.shape
        out = self.quantizer(z.permute(0, 2, 3, 1).reshape(-1, d))
        grid = out["quantized"].view(b, h, w, d).permute(0, 3, 1, 2)
        return {**out, "z": z, "codes": out["codes"].view(b, h, w), "reconstruction": self.decoder(grid)}

    @torch.no_grad()
    def codes_of(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> code grids ``[B, h, w]`` (long)."""
        z = self.encode(images)
        d = z.shape[1]
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        return nearest_codes(flat, self.quantizer.codebook).view(z.shape[0], z.shape[2], z.shape[3])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code grids ``[B, h, w]`` -> images ``[B, 3, S, S]`` in [0, 1]."""
        grid = self.quantizer.codebook[codes].permute(0, 3, 1, 2)
        return self.decoder(grid).clamp(0, 1)


@register_objective("vqvae")
class VQVAE(ImageSSL):
    Params = VQVAEParams
    num_views = 1

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        channels, side = feature_grid(backbone, p.image_size)
        upsamples = math.log2(p.image_size / side) if p.image_size % side == 0 else -1
        if upsamples < 0 or upsamples != int(upsamples):
            raise RecipeError(f"objective.image_size={p.image_size}: the backbone's {side} x {side} feature map must "
                              "be the image shrunk by a power of 2 for the decoder to upsample it back; use a power "
                              "of 2 such as 32")
        module = VQVAEModule(backbone, channels, p.code_dim, p.codebook_size, int(upsamples), p.decoder_channels,
                             p.ema_decay, p.ema_eps, p.restart_after)
        # the decoder starts at the training images' mean colour (mostly the world's white background), so the
        # first steps learn shapes rather than the background
        images = self.train_image_sample()
        if len(images):
            with torch.no_grad():
                module.decoder[-1].bias.copy_(images.float().mean(dim=(0, 2, 3)) / 255)
        return module

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        view = batch["view1"]
        mean, std = self.pixel_stats(view.device)
        clean = (view.float() * std + mean).clamp(0, 1)
        out = module(view)
        recon = F.mse_loss(out["reconstruction"].float(), clean)
        return {"loss": recon + self.params.commitment_beta * out["commitment"],
                "reconstruction_mse": recon.detach(), "commitment": out["commitment"].detach(),
                "perplexity": out["perplexity"], "codes_used": out["codes_used"],
                "embedding": out["z"].detach().float().mean(dim=(2, 3))}

    # -- evaluation and export ---------------------------------------------------------------------
    def codebook_stats(self, module: nn.Module, device: torch.device) -> dict[str, float]:
        """Codebook usage and reconstruction error on the eval images (the training images without an eval
        split), the backbone's batch norms as exported (`precise_bn`)."""
        core: VQVAEModule = self.core(module)
        p = self.params
        split = self.eval if self.eval is not None and len(self.eval) else self.train
        images = split.images[: p.eval_max_images or len(split.images)]
        settings = self.settings()
        backbone = precise_bn(core.backbone, self.train.images, settings, device)
        was_training = core.training
        core.eval()
        counts = torch.zeros(p.codebook_size, device=device)
        squared, pixels = 0.0, 0
        mean, std = self.pixel_stats(device)
        try:
            with torch.no_grad():
                for i in range(0, len(images), settings.batch_size):
                    x = eval_view(images[i:i + settings.batch_size], p.image_size, self.mean, self.std).to(device)
                    z = core.pre_quant(backbone.model.forward_features(x))
                    b, d, h, w = z.shape
                    q = core.quantizer(z.permute(0, 2, 3, 1).reshape(-1, d))
                    counts += code_counts(q["codes"], p.codebook_size)
                    recon = core.decoder(q["quantized"].view(b, h, w, d).permute(0, 3, 1, 2)).float()
                    squared += float((recon - (x.float() * std + mean)).pow(2).sum())
                    pixels += recon.numel()
        finally:
            core.train(was_training)
        return {**codebook_usage(counts, p.collapse_fraction, f"{len(images)} images"),
                "reconstruction_mse": squared / max(pixels, 1), "codebook_restarts": float(core.quantizer.restarts)}

    def has_evaluation(self) -> bool:
        return True  # the codebook's usage is measured even without labels

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        out = super().evaluate(module, loader, accelerator)
        self.last_codebook = self.codebook_stats(module, accelerator.device)
        return {**out, **self.last_codebook}

    def export(self, module: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        core: VQVAEModule = self.core(module)
        p = self.params
        if getattr(self, "last_codebook", None) is None:
            self.last_codebook = self.codebook_stats(module, next(core.parameters()).device)
        stats = self.last_codebook
        super().export(module, directory)  # the backbone (timm) and mmssl_image_eval.json (`eval_meta`)
        _, side = feature_grid(core.backbone, p.image_size)
        state = {k: v.detach().cpu().contiguous() for k, v in core.state_dict().items()
                 if not k.startswith("backbone.")}
        save_file(state, str(Path(directory) / WEIGHTS_FILE))
        config = {**stats, "method": "vqvae", "codebook_size": p.codebook_size, "code_dim": p.code_dim,
                  "feature_dim": int(core.pre_quant.in_channels), "grid": [side, side], "image_size": p.image_size,
                  "upsamples": int(math.log2(p.image_size // side)), "decoder_channels": p.decoder_channels,
                  "mean": list(self.mean), "std": list(self.std), "decoder_output": "pixels in [0, 1]",
                  "load": "mmssl.objectives.vqvae.load_vqvae(folder)"}
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")

    def eval_meta(self) -> dict[str, Any]:
        stats = self.last_codebook
        return {**super().eval_meta(), "codebook_collapsed": bool(stats["codebook_collapsed"]),
                "codebook_perplexity": stats["codebook_perplexity"]}


def load_vqvae(directory: str | Path) -> VQVAEModule:
    """The whole VQ-VAE an export holds (its backbone folder + ``vqvae.safetensors``), in eval mode; its `mean` and
    `std` (normalisation of its inputs) and `config` are attributes."""
    from safetensors.torch import load_file

    path = Path(directory)
    if not (path / CONFIG_FILE).is_file():
        raise MmsslError(f"{str(directory)!r} holds no VQ-VAE (no {CONFIG_FILE}): export one with objective 'vqvae'")
    cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    module = VQVAEModule(load_backbone(path), cfg["feature_dim"], cfg["code_dim"], cfg["codebook_size"],
                         cfg["upsamples"], cfg["decoder_channels"])
    missing, unexpected = module.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise MmsslError(f"{str(path / WEIGHTS_FILE)!r} does not match {CONFIG_FILE}: missing {missing}, "
                         f"unexpected {unexpected}")
    module.mean, module.std, module.config = tuple(cfg["mean"]), tuple(cfg["std"]), cfg
    return module.eval()
