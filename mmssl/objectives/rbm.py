"""Stacked restricted Boltzmann machines, trained greedily layer by layer (Hinton, Osindero & Teh 2006; Hinton &
Salakhutdinov 2006), used as an image encoder.

Each image is turned grey (ITU-R 601 luma) and binarised -- a pixel is on where it is darker than
``objective.threshold`` (the world's shapes are ink on a white background), or, with ``binarise: bernoulli``,
on with probability 1 - grey, drawn afresh every step -- and flattened into the first RBM's visible units.
Bernoulli RBMs (`mmssl.losses.rbm`) are trained with contrastive divergence (CD-k; persistent CD with
``persistent: true``, its fantasy particles a buffer of the module, so checkpoints carry them). The run's steps are
split evenly between the layers, bottom first: layer l trains on the hidden probabilities of the layers below it,
which no longer change (they get no gradient, so the optimiser leaves them alone); the layer being trained and the
steps done are buffers too, so a killed run resumes exactly. Train with plain SGD with momentum and no gradient
clipping (``train.max_grad_norm: null``) to apply the CD update as the papers do.

The encoder that evaluation probes is the stack's mean-field up pass: the hidden probabilities of the top layer
for the deterministic input (thresholded pixels, or the probabilities 1 - grey under ``bernoulli``). Evaluation,
its random-init floor and the collapse monitors are the image-SSL base's. There is no convolutional backbone:
``model`` stays empty.

Export: no vision library holds an RBM stack (timm and transformers cannot), so the folder has

* ``model.safetensors``: the state dict of ``torch.nn.Sequential(Linear(V, H1), Sigmoid(), Linear(H1, H2),
  Sigmoid(), ...)`` (each Linear: an RBM's weights and hidden biases), which plain torch loads::

      import json, torch
      from safetensors.torch import load_file
      cfg = json.load(open(f"{folder}/rbm_config.json"))
      sizes = [cfg["visible"], *cfg["layers"]]
      encoder = torch.nn.Sequential(*[m for a, b in zip(sizes, sizes[1:])
                                      for m in (torch.nn.Linear(a, b), torch.nn.Sigmoid())])
      encoder.load_state_dict(load_file(f"{folder}/model.safetensors"))
      # images: float [B, 3, S, S] in [0, 1], S = cfg["image_size"]
      grey = (images * torch.tensor(cfg["luma"]).view(1, 3, 1, 1)).sum(1).flatten(1)
      features = encoder((grey < cfg["threshold"]).float())   # binarise "bernoulli": encoder(1 - grey)

* ``rbm_visible_biases.safetensors``: each RBM's visible biases (with the above, the whole generative stack);
* ``rbm_config.json``: sizes, image size and the input transform; `load_rbm_encoder` rebuilds the mmssl module
  (images in [0, 1] -> features), which ``mmssl eval DIR`` uses.

The model card (``model_cards/image_encoder.md``) shows the snippet above for an RBM stack instead of timm's.
Streamed data goes through the base unchanged (the method needs no image's row). Several processes are untested:
DDP would broadcast rank 0's persistent chains to every process at each forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from mmssl.data.image_sources import data_description
from mmssl.data.image_views import TwoViewsConfig
from mmssl.errors import MmsslError, RecipeError
from mmssl.losses.rbm import bernoulli, cd_loss, gibbs_chain, hidden_probabilities, reconstruction_error
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams, OwnEncoderSSL
from mmssl.registry import register_objective
from mmssl.schema import PositiveInt, Range

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601: grey = 0.299 R + 0.587 G + 0.114 B
CONFIG_FILE = "rbm_config.json"
VISIBLE_BIASES_FILE = "rbm_visible_biases.safetensors"


def visible_units(images: torch.Tensor, binarise: str, threshold: float, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Images ``[B, 3, S, S]`` in [0, 1] -> pixels ``[B, S * S]`` in raster order: grey < `threshold` (binary),
    or under ``bernoulli`` the ink probabilities 1 - grey (`sample`: binary draws from them)."""
    grey = (images.float() * torch.tensor(LUMA, device=images.device).view(1, 3, 1, 1)).sum(dim=1).flatten(1)
    if binarise == "threshold":
        return (grey < threshold).float()
    ink = (1 - grey).clamp(0, 1)
    return bernoulli(ink, generator) if sample else ink


def pixel_log_odds(images: torch.Tensor, binarise: str, threshold: float) -> torch.Tensor:
    """log(p / (1 - p)) of each pixel being on over uint8 `images` ``[N, 3, S, S]``, p clamped to
    [1e-3, 1 - 1e-3]: the biases at which independent pixels match the data (Hinton's "practical guide")."""
    on = visible_units(images.float() / 255, binarise, threshold).mean(dim=0).clamp(1e-3, 1 - 1e-3)
    return torch.log(on / (1 - on))


def no_augmentation() -> TwoViewsConfig:
    return TwoViewsConfig(preset="none")  # RBMs and NADE model the images as they are


@dataclass
class RBMParams(ImageSSLParams):
    image_size: Annotated[int, Range(8, 1024)] = 28  # the visible layer is image_size x image_size binary pixels
    views: TwoViewsConfig = field(default_factory=no_augmentation)
    layers: list[PositiveInt] = field(default_factory=lambda: [512, 256])  # hidden units of each RBM, bottom first
    cd_steps: PositiveInt = 1  # k: Gibbs steps of the negative phase (CD-k, or per update of the persistent chains)
    persistent: bool = False  # persistent CD (Tieleman 2008): train.batch_size chains per layer, kept across steps
    # threshold: a pixel is on where grey < `threshold` (dark shapes on a light background); bernoulli: on with
    # probability 1 - grey, drawn each step (evaluation and export then feed the probabilities 1 - grey)
    binarise: Literal["threshold", "bernoulli"] = "threshold"
    threshold: Annotated[float, Range(0, 1, open_low=True)] = 0.95  # grey level below which a pixel is on
    init_std: Annotated[float, Range(0, 1, open_low=True)] = 0.01  # weights start as N(0, init_std^2) (Hinton 2010)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("objective.layers is empty: list the hidden units of each RBM, bottom first, e.g. "
                             "[512, 256]")


class RBM(nn.Module):
    """One Bernoulli RBM; its forward is p(h = 1 | v)."""

    def __init__(self, visible: int, hidden: int, init_std: float, generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(hidden, visible, generator=generator) * init_std)  # as nn.Linear's
        self.visible_bias = nn.Parameter(torch.zeros(visible))
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return hidden_probabilities(v, self.weight, self.hidden_bias)

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.weight, self.visible_bias, self.hidden_bias


class RBMStack(nn.Module):
    """The encoder: images ``[B, 3, S, S]`` in [0, 1] (mean 0, std 1: no normalisation) -> grey -> binary (or
    ink-probability) pixels -> the top RBM's hidden probabilities. Stands where the image-SSL base expects a
    backbone (`mean`, `std`, `dim`, `arch`, `library`)."""

    arch = "rbm_stack"
    library = "pytorch"

    def __init__(self, image_size: int, layers: list[int], binarise: str, threshold: float, init_std: float = 0.01,
                 seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        sizes = [image_size * image_size, *layers]
        self.rbms = nn.ModuleList(RBM(a, b, init_std, generator) for a, b in zip(sizes, sizes[1:]))
        self.image_size, self.layers, self.binarise, self.threshold = image_size, list(layers), binarise, threshold
        self.mean, self.std, self.dim = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), layers[-1]

    def visible(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """The first layer's visible units ``[B, S * S]``; `sample`: draw Bernoulli pixels (``binarise: bernoulli``)."""
        return visible_units(images, self.binarise, self.threshold, sample)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visible(images)
        for rbm in self.rbms:
            v = rbm(v)
        return v


class RBMModule(nn.Module):
    """The trained state: the stack, the greedy schedule (steps done, run length) and, for PCD, each layer's
    fantasy particles, all in the state dict. Its forward is one CD / PCD step's loss for the layer in training."""

    def __init__(self, backbone: RBMStack, cd_steps: int, chains: int | None, seed: int):
        super().__init__()
        self.backbone, self.cd_steps = backbone, cd_steps
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))  # known after the first step
        self.persistent = chains is not None
        if chains is not None:
            generator = torch.Generator().manual_seed(seed + 1)
            for i, rbm in enumerate(backbone.rbms):
                self.register_buffer(f"particles_{i}", bernoulli(torch.full((chains, rbm.weight.shape[1]), 0.5),
                                                                 generator))

    def active_layer(self) -> int:
        """The RBM being trained: the steps are split evenly between the layers, bottom first."""
        layers, total = len(self.backbone.rbms), int(self.total_steps)
        return 0 if total == 0 else min(layers - 1, int(self.steps_done) * layers // total)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        layer = self.active_layer()
        with torch.no_grad():  # the data for this layer: the (frozen) layers below, mean-field
            v = self.backbone.visible(images, sample=True)
            for rbm in self.backbone.rbms[:layer]:
                v = rbm(v)
        rbm = self.backbone.rbms[layer]
        weight, visible_bias, hidden_bias = rbm.parts()
        if self.persistent:
            particles = getattr(self, f"particles_{layer}")
            samples, negative = gibbs_chain(particles, weight, visible_bias, hidden_bias, self.cd_steps)
            particles.copy_(samples)
        else:
            _, negative = gibbs_chain(v, weight, visible_bias, hidden_bias, self.cd_steps)
        return {"loss": cd_loss(v, negative, weight, visible_bias, hidden_bias),
                "reconstruction_error": reconstruction_error(v, weight, visible_bias, hidden_bias),
                "layer": torch.tensor(float(layer), device=v.device),
                # centred: sigmoid probabilities share a large mean, which would hide their spread from the monitor
                "embedding": (h := rbm(v).detach()) - h.mean(dim=0, keepdim=True)}


@register_objective("rbm")
class RestrictedBoltzmannMachines(OwnEncoderSSL):
    Params = RBMParams
    # no timm: safetensors of a torch.nn.Sequential + rbm_config.json (see the module docstring)
    output = replace(ImageSSL.output, library="pytorch")
    num_views = 1

    encoder_description = "a stack of RBMs sized by objective.layers and objective.image_size"

    def build_encoder(self) -> RBMStack:
        p = self.params
        self.stack = RBMStack(p.image_size, p.layers, p.binarise, p.threshold, p.init_std, self.recipe.seed)
        return self.stack

    def build_module(self, backbone: RBMStack) -> nn.Module:  # type: ignore[override]
        p = self.params
        # Hinton's "practical guide" (2010): the first visible biases start at log(p / (1 - p)) of the data
        with torch.no_grad():
            backbone.rbms[0].visible_bias.copy_(pixel_log_odds(self.train_image_sample(), p.binarise, p.threshold))
        return RBMModule(backbone, p.cd_steps, self.recipe.train.batch_size if p.persistent else None,
                         self.recipe.seed)

    def has_unused_parameters(self) -> bool:
        return len(self.params.layers) > 1  # only the layer in training gets a gradient

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return module(batch["view1"])

    def after_optimizer_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        super().after_optimizer_step(module, step, total_steps)
        core = self.core(module)
        core.steps_done.fill_(step)
        core.total_steps.fill_(total_steps)

    # -- evaluation and export ---------------------------------------------------------------------
    def load_export(self, directory: Path) -> nn.Module:
        return load_rbm_encoder(directory)

    def export(self, module: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        stack: RBMStack = self.core(module).backbone
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights, visible = {}, {}
        for i, rbm in enumerate(stack.rbms):
            weights[f"{2 * i}.weight"] = rbm.weight.detach().cpu().contiguous()
            weights[f"{2 * i}.bias"] = rbm.hidden_bias.detach().cpu().contiguous()
            visible[str(i)] = rbm.visible_bias.detach().cpu().contiguous()
        save_file(weights, str(directory / "model.safetensors"))
        save_file(visible, str(directory / VISIBLE_BIASES_FILE))
        config = {
            "method": "rbm", "architecture": "stacked Bernoulli RBMs (greedy layer-wise, Hinton et al. 2006)",
            "visible": stack.image_size ** 2, "layers": stack.layers, "image_size": stack.image_size,
            "luma": list(LUMA), "binarise": stack.binarise, "threshold": stack.threshold,
            "input": ("images in [0, 1] resized to image_size; grey = luma . RGB; visible units: grey < threshold "
                      "(binarise threshold) or 1 - grey (binarise bernoulli), flattened row by row"),
            "encoder": "torch.nn.Sequential(Linear, Sigmoid, ...) over model.safetensors: the top layer's hidden "
                       "probabilities",
            "trained_on": data_description(self.recipe.data),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.write_eval_meta(directory)


def load_rbm_encoder(directory: str | Path) -> RBMStack:
    """The encoder `export` wrote (images ``[B, 3, S, S]`` in [0, 1] -> features), visible biases included."""
    from safetensors.torch import load_file

    path = Path(directory)
    if not (path / CONFIG_FILE).is_file():
        raise MmsslError(f"{str(directory)!r} holds no RBM stack (no {CONFIG_FILE}): export one with objective 'rbm'")
    cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    stack = RBMStack(cfg["image_size"], cfg["layers"], cfg["binarise"], cfg["threshold"])
    weights, visible = load_file(str(path / "model.safetensors")), load_file(str(path / VISIBLE_BIASES_FILE))
    with torch.no_grad():
        for i, rbm in enumerate(stack.rbms):
            rbm.weight.copy_(weights[f"{2 * i}.weight"])
            rbm.hidden_bias.copy_(weights[f"{2 * i}.bias"])
            rbm.visible_bias.copy_(visible[str(i)])
    return stack.eval()
