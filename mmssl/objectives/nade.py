"""The neural autoregressive distribution estimator (NADE; Larochelle & Murray 2011) as an image model and encoder.

Each image is turned grey (ITU-R 601 luma) and binarised as `rbm` does -- a pixel is on where it is darker than
``objective.threshold``, or, with ``binarise: bernoulli``, on with probability 1 - grey, drawn afresh every step
-- and its D = image_size² pixels are modelled in raster order, p(v) = prod_d p(v_d | v_<d), with NADE's shared
weights (`mmssl.losses.nade`): the loss is the exact negative log-likelihood, computed for all pixels at once.
The output biases start at the log-odds of each pixel's frequency in the training images, so the untrained model
is close to the independent per-pixel Bernoulli baseline.

Evaluation adds to the image-SSL base's (kNN and linear probe of the frozen encoder against its random-init floor)
the held-out likelihood in bits per pixel: ``bits_per_dim`` of the model on the eval images (binarised as in
training; under ``bernoulli`` one draw with the recipe's seed) against ``baseline_bits_per_dim``, independent
Bernoullis fitted on the training images (add-one smoothing). Lower is better; the gap is what the pixels'
dependencies are worth.

The encoder is h = sigmoid(c + W v): NADE's hidden layer once every pixel has been seen (the paper's h_{D+1}). It
is the one hidden vector that depends on the whole image, and it is a plain Linear + Sigmoid; the mean of h_d
over d would weigh the image's top rows D times more than its bottom row. The last pixel's column of W takes no
part in any conditional, so it starts at zero and stays there (no gradient): h is exactly sigmoid(a_D) as well.

Export: no vision library holds a NADE, so the folder has

* ``model.safetensors``: the state dict of ``torch.nn.Sequential(Linear(D, H), Sigmoid())`` (W and c), which
  plain torch loads::

      import json, torch
      from safetensors.torch import load_file
      cfg = json.load(open(f"{folder}/nade_config.json"))
      encoder = torch.nn.Sequential(torch.nn.Linear(cfg["pixels"], cfg["hidden"]), torch.nn.Sigmoid())
      encoder.load_state_dict(load_file(f"{folder}/model.safetensors"))
      # images: float [B, 3, S, S] in [0, 1], S = cfg["image_size"]
      grey = (images * torch.tensor(cfg["luma"]).view(1, 3, 1, 1)).sum(1).flatten(1)
      features = encoder((grey < cfg["threshold"]).float())   # binarise "bernoulli": encoder(1 - grey)

* ``nade_output.safetensors``: V (``weight``, ``[D, H]``) and b (``bias``, ``[D]``): with the above, the whole
  density (`mmssl.losses.nade.nade_nll` / `nade_sample` take W, c, V, b);
* ``nade_config.json``: sizes, image size and the input transform; `load_nade` rebuilds the mmssl module
  (images in [0, 1] -> features; ``nll``, ``sample``), which ``mmssl eval DIR`` uses;
* ``nade_samples.png``: a grid of images drawn from the model pixel by pixel (ink dark on white), seeded.

Streamed data goes through the base unchanged (the method needs no image's row).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from mmssl.data.image_sources import data_description
from mmssl.data.image_views import TwoViewsConfig
from mmssl.errors import MmsslError, RecipeError
from mmssl.losses.nade import bernoulli_baseline, bernoulli_nll, nade_nll, nade_sample
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams, OwnEncoderSSL
from mmssl.objectives.rbm import LUMA, no_augmentation, pixel_log_odds, visible_units
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, PositiveInt, Range

CONFIG_FILE = "nade_config.json"
OUTPUT_FILE = "nade_output.safetensors"
SAMPLES_FILE = "nade_samples.png"


@dataclass
class NADEParams(ImageSSLParams):
    image_size: Annotated[int, Range(8, 1024)] = 16  # D = image_size² binary pixels, modelled in raster order
    views: TwoViewsConfig = field(default_factory=no_augmentation)
    hidden: PositiveInt = 500  # H: NADE's hidden units (the paper's 500); the encoder's feature size
    # threshold: a pixel is on where grey < `threshold` (dark shapes on a light background); bernoulli: on with
    # probability 1 - grey, drawn each step (evaluation: one seeded draw; the encoder sees the probabilities)
    binarise: Literal["threshold", "bernoulli"] = "threshold"
    threshold: Annotated[float, Range(0, 1, open_low=True)] = 0.95  # grey level below which a pixel is on
    init_std: Annotated[float, Range(0, 1, open_low=True)] = 0.01  # W and V start as N(0, init_std^2)
    samples: NonNegativeInt = 64  # images drawn into nade_samples.png at export (0: none)


class NADE(nn.Module):
    """The whole model; its forward is the encoder: images ``[B, 3, S, S]`` in [0, 1] (mean 0, std 1: no
    normalisation) -> pixels -> h = sigmoid(c + W v) ``[B, H]``. Stands where the image-SSL base expects a
    backbone (`mean`, `std`, `dim`, `arch`, `library`)."""

    arch = "nade"
    library = "pytorch"

    def __init__(self, image_size: int, hidden: int, binarise: str, threshold: float, init_std: float = 0.01,
                 seed: int = 0):
        super().__init__()
        generator, pixels = torch.Generator().manual_seed(seed), image_size * image_size
        weight = torch.randn(hidden, pixels, generator=generator) * init_std
        weight[:, -1] = 0  # the last pixel conditions nothing: its column gets no gradient and stays 0
        self.weight = nn.Parameter(weight)  # W [H, D], as nn.Linear(D, H).weight
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))  # c
        self.output_weight = nn.Parameter(torch.randn(pixels, hidden, generator=generator) * init_std)  # V [D, H]
        self.output_bias = nn.Parameter(torch.zeros(pixels))  # b
        self.image_size, self.hidden, self.binarise, self.threshold = image_size, hidden, binarise, threshold
        self.mean, self.std, self.dim = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), hidden

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.weight, self.hidden_bias, self.output_weight, self.output_bias

    def visible(self, images: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return visible_units(images, self.binarise, self.threshold, sample, generator)

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(nn.functional.linear(v, self.weight, self.hidden_bias))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self.visible(images))

    def nll(self, v: torch.Tensor) -> torch.Tensor:
        """-log p(v) ``[B]`` in nats of pixels `v` ``[B, D]``."""
        return nade_nll(v, *self.parts())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` binary images ``[n, S, S]`` drawn pixel by pixel."""
        return nade_sample(n, *self.parts(), generator=generator)[0].view(n, self.image_size, self.image_size)


class NADEModule(nn.Module):
    """The trained state (the NADE as ``backbone``); its forward is one step's loss: the mean negative
    log-likelihood per pixel in nats (so the learning rate does not depend on the image size)."""

    def __init__(self, backbone: NADE):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        nade = self.backbone
        v = nade.visible(images, sample=True)
        loss = nade.nll(v).mean() / v.shape[1]
        return {"loss": loss, "bits_per_dim": loss.detach() / math.log(2),
                # centred: sigmoid features share a large mean, which would hide their spread from the monitor
                "embedding": (h := nade.encode(v).detach()) - h.mean(dim=0, keepdim=True)}


@register_objective("nade")
class NeuralAutoregressiveDensity(OwnEncoderSSL):
    Params = NADEParams
    # no timm: safetensors of a torch.nn.Sequential + nade_config.json (see the module docstring)
    output = replace(ImageSSL.output, library="pytorch")
    num_views = 1

    encoder_description = "a NADE sized by objective.hidden and objective.image_size"

    def build_encoder(self) -> NADE:
        p = self.params
        self.nade = NADE(p.image_size, p.hidden, p.binarise, p.threshold, p.init_std, self.recipe.seed)
        return self.nade

    def build_module(self, backbone: NADE) -> nn.Module:  # type: ignore[override]
        # the output biases start at each pixel's log-odds in the training images: the independent baseline
        with torch.no_grad():
            backbone.output_bias.copy_(pixel_log_odds(self.train_image_sample(), backbone.binarise,
                                                      backbone.threshold))
        return NADEModule(backbone)

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return module(batch["view1"])

    # -- evaluation --------------------------------------------------------------------------------
    def has_evaluation(self) -> bool:
        return self.eval is not None and len(self.eval) > 0  # the likelihood needs no labels

    def likelihood(self, nade: NADE, device: torch.device, chunk: int = 256) -> dict[str, float]:
        """Held-out bits per pixel of `nade` and of the independent per-pixel Bernoulli fitted on the training
        images, on the eval images binarised as in training (under ``bernoulli``: one draw, the recipe's seed)."""
        generator = torch.Generator().manual_seed(self.recipe.seed)
        was_training = nade.training
        nade.eval()
        nats = baseline_nats = 0.0
        try:
            with torch.no_grad():
                train = torch.cat([nade.visible(self.train.images[i:i + chunk].float() / 255)
                                   for i in range(0, len(self.train), chunk)])
                p = bernoulli_baseline(train)
                for i in range(0, len(self.eval), chunk):
                    v = nade.visible(self.eval.images[i:i + chunk].float() / 255, sample=True, generator=generator)
                    nats += float(nade.nll(v.to(device)).double().sum())
                    baseline_nats += float(bernoulli_nll(v, p).sum())
        finally:
            nade.train(was_training)
        n, dims = len(self.eval), nade.image_size ** 2
        return {"bits_per_dim": nats / (n * dims * math.log(2)), "nll_nats": nats / n,
                "baseline_bits_per_dim": baseline_nats / (n * dims * math.log(2))}

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        out = super().evaluate(module, loader, accelerator)  # kNN / probe / floor, when the data has labels
        return {**out, **self.likelihood(self.core(module).backbone, accelerator.device)}

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        out = super().evaluate_export(directory)
        return {**out, **self.likelihood(self.load_export(directory), torch.device("cpu"))}

    def load_export(self, directory: Path) -> nn.Module:
        return load_nade(directory)

    # -- export ------------------------------------------------------------------------------------
    def export(self, module: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        nade: NADE = self.core(module).backbone
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"0.weight": nade.weight.detach().cpu().contiguous(),
                   "0.bias": nade.hidden_bias.detach().cpu().contiguous()}, str(directory / "model.safetensors"))
        save_file({"weight": nade.output_weight.detach().cpu().contiguous(),
                   "bias": nade.output_bias.detach().cpu().contiguous()}, str(directory / OUTPUT_FILE))
        config = {
            "method": "nade", "architecture": "NADE (Larochelle & Murray 2011), pixels in raster order",
            "pixels": nade.image_size ** 2, "hidden": nade.hidden, "image_size": nade.image_size,
            "luma": list(LUMA), "binarise": nade.binarise, "threshold": nade.threshold,
            "input": ("images in [0, 1] resized to image_size; grey = luma . RGB; pixels: grey < threshold "
                      "(binarise threshold) or 1 - grey (binarise bernoulli), flattened row by row"),
            "encoder": "torch.nn.Sequential(Linear, Sigmoid) over model.safetensors: h = sigmoid(c + W v)",
            "density": ("p(v_d = 1 | v_<d) = sigmoid(b_d + V_d . sigmoid(c + W[:, <d] v_<d)); W, c in "
                        "model.safetensors (0.weight, 0.bias), V, b in nade_output.safetensors (weight, bias)"),
            "trained_on": data_description(self.recipe.data),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.write_eval_meta(directory)
        if self.params.samples:
            generator = torch.Generator(device=nade.weight.device).manual_seed(self.recipe.seed)
            save_grid(nade.sample(self.params.samples, generator).cpu(), directory / SAMPLES_FILE)


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, scale: int = 4) -> None:
    """Binary images ``[N, S, S]`` (1 = ink) as a PNG grid, ink dark on white, each pixel `scale` px wide."""
    from PIL import Image

    n, size, _ = images.shape
    rows, gap = math.ceil(n / columns), 1
    canvas = torch.full((rows * (size + gap) + gap, columns * (size + gap) + gap), 0.5)  # grey lines between
    for i in range(n):
        y, x = gap + (i // columns) * (size + gap), gap + (i % columns) * (size + gap)
        canvas[y:y + size, x:x + size] = 1 - images[i].float()
    pixels = (canvas * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="L").resize((canvas.shape[1] * scale, canvas.shape[0] * scale),
                                             Image.NEAREST).save(path)


def load_nade(directory: str | Path) -> NADE:
    """The model `export` wrote (forward: images ``[B, 3, S, S]`` in [0, 1] -> features; ``nll``, ``sample``)."""
    from safetensors.torch import load_file

    path = Path(directory)
    if not (path / CONFIG_FILE).is_file():
        raise MmsslError(f"{str(directory)!r} holds no NADE (no {CONFIG_FILE}): export one with objective 'nade'")
    cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    nade = NADE(cfg["image_size"], cfg["hidden"], cfg["binarise"], cfg["threshold"])
    encoder, output = load_file(str(path / "model.safetensors")), load_file(str(path / OUTPUT_FILE))
    with torch.no_grad():
        nade.weight.copy_(encoder["0.weight"])
        nade.hidden_bias.copy_(encoder["0.bias"])
        nade.output_weight.copy_(output["weight"])
        nade.output_bias.copy_(output["bias"])
    return nade.eval()
