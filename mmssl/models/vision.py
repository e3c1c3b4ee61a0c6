"""Image backbones for self-supervised learning: any timm model by name, torchvision classification models, and
transformers vision models (`AutoModel` from a config or a local folder). Each maps normalised images
[B, 3, S, S] to features [B, D] and saves itself where vision users load it:

* timm: `timm.create_model("local-dir:DIR")` (timm's own `save_for_hf` folder: config.json + model.safetensors,
  the constructor arguments recorded as `model_args`, e.g. a narrow ResNet's `channels`);
* transformers: `AutoModel.from_pretrained(DIR)`;
* torchvision: `torchvision.models.get_model(arch, num_classes=...)` + `load_state_dict` of model.safetensors
  (the folder's `torchvision_config.json` says which).

``model.config`` holds the constructor's keyword arguments; ``small_stem: true`` (ResNets) replaces the 7x7/2
stem and its max-pool by one 3x3/1 convolution, the usual choice for 32-64 px images. timm's ResNet has no such
stem, so a small-stem timm folder is written so that timm refuses it with a message naming the loader
(`timm.create_model("local-dir:DIR")` raises ``RuntimeError: Unknown model (resnet18 with mmssl's small stem
...)``) instead of silently building the 7x7 model; :func:`load_backbone` rebuilds it exactly.

The timm ``config.json`` describes the trained model, not the ImageNet checkpoint its architecture is known for:
``pretrained_cfg`` holds the image size it was trained at, the mean/std its images were normalised with, a
centre crop of the whole image (crop_pct 1.0, bicubic: mmssl's eval preprocessing) and, where known, a
description of the data; no ImageNet tag, licence, paper or origin.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.config import ModelConfig
from mmssl.errors import MmsslError, RecipeError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MMSSL_FILE = "mmssl_backbone.json"  # library, architecture, small stem: enough for load_backbone
LIBRARIES = ("timm", "torchvision", "transformers")
# pretrained_cfg keys that describe an exported checkpoint's inputs and layout; the rest of what timm copies from
# the architecture's default (ImageNet) config -- tag, licence, origin, paper, test sizes -- is not about it
TIMM_CFG_KEYS = ("custom_load", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean",
                 "std", "num_classes", "pool_size", "first_conv", "classifier")


def small_stem_name(arch: str) -> str:
    """The `architecture` a small-stem timm export records: no timm model, so timm stops with this text."""
    return (f"{arch} with mmssl's small stem (one 3x3 stride-1 conv1, no max-pool), which timm cannot build; "
            "load this folder with mmssl.models.vision.load_backbone(folder)")


class Backbone(nn.Module):
    """images -> features [B, dim]; `library`, `arch`, `kwargs` and `small_stem` say how to rebuild it."""

    def __init__(self, model: nn.Module, library: str, arch: str, kwargs: dict[str, Any], dim: int,
                 mean: tuple[float, ...], std: tuple[float, ...], small_stem: bool = False):
        super().__init__()
        self.model = model
        self.library, self.arch, self.kwargs, self.dim = library, arch, kwargs, dim
        self.mean, self.std, self.small_stem = tuple(mean), tuple(std), small_stem
        self.image_size: int | None = None  # the largest image side seen in training mode (what it was trained at)
        self.trained_on: str | None = None  # a description of the training data, where the caller knows it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            side = max(int(images.shape[-2]), int(images.shape[-1]))
            if self.image_size is None or side > self.image_size:
                self.image_size = side
        if self.library == "transformers":
            out = self.model(pixel_values=images)
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = out.last_hidden_state.mean(dim=1)
            return pooled.flatten(1)
        return self.model(images).flatten(1)

    def save(self, directory: Path, image_size: int | None = None, trained_on: str | None = None) -> None:
        """Write the backbone in its library's own format (plus `mmssl_backbone.json`). `image_size` (default: the
        size it was trained at, as seen by `forward`) and `trained_on` (default: `self.trained_on`) describe it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = self.model
        image_size = image_size or self.image_size
        trained_on = trained_on or self.trained_on
        if self.library == "timm":
            self._save_timm(directory, image_size, trained_on)
        elif self.library == "transformers":
            model.save_pretrained(str(directory), safe_serialization=True)
        else:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(directory / "model.safetensors"))
            (directory / "torchvision_config.json").write_text(json.dumps(
                {"architecture": self.arch, "model_args": _jsonable(self.kwargs)}, indent=2))
        (directory / MMSSL_FILE).write_text(json.dumps(
            {"library": self.library, "architecture": self.arch, "model_args": _jsonable(self.kwargs),
             "small_stem": self.small_stem, "num_features": self.dim, "mean": list(self.mean),
             "std": list(self.std), "image_size": image_size, "trained_on": trained_on}, indent=2))

    def _save_timm(self, directory: Path, image_size: int | None, trained_on: str | None) -> None:
        """timm's `save_for_hf` folder, its `pretrained_cfg` rewritten to describe this model (see the module
        docstring); a small stem gets an `architecture` timm refuses with a message naming the loader."""
        from timm.models import save_for_hf

        data_config: dict[str, Any] = {"mean": self.mean, "std": self.std, "crop_pct": 1.0, "crop_mode": "center",
                                       "interpolation": "bicubic"}
        if image_size:
            data_config["input_size"] = (3, image_size, image_size)
        args = dict(model_args=_jsonable(self.kwargs), safe_serialization=True)
        try:
            save_for_hf(self.model, str(directory), data_config=data_config, **args)
        except ValueError:  # a fixed-size model (a ViT) that declares another size: record the size it takes
            if "input_size" not in data_config:
                raise
            data_config.pop("input_size")
            image_size = None
            save_for_hf(self.model, str(directory), data_config=data_config, **args)
        path = directory / "config.json"
        config = json.loads(path.read_text())
        cfg = {k: config["pretrained_cfg"][k] for k in TIMM_CFG_KEYS if k in config["pretrained_cfg"]}
        cfg["description"] = (f"Self-supervised {self.arch} image encoder trained with mmssl"
                              + (f" at {image_size} px" if image_size else "")
                              + (f" on {trained_on}" if trained_on else "") + ".")
        config["pretrained_cfg"] = cfg
        if self.small_stem:
            config["architecture"] = small_stem_name(self.arch)
            config["mmssl"] = {"architecture": self.arch, "small_stem": True,
                               "load": "mmssl.models.vision.load_backbone(folder)"}
        path.write_text(json.dumps(config, indent=2))


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(kwargs, default=list))


def _replace_stem(model: nn.Module, where: str) -> None:
    """A ResNet's 7x7 stride-2 convolution + max-pool -> one 3x3 stride-1 convolution (CIFAR-style stem)."""
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise RecipeError(f"model.config.small_stem: {where} is not a ResNet with a single-conv stem "
                          "(conv1 + maxpool); drop small_stem or use a ResNet")
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def _library(arch: str, library: str) -> str:
    if library != "auto":
        return library
    import timm
    import torchvision

    if timm.is_model(arch):
        return "timm"
    if arch in torchvision.models.list_models(module=torchvision.models):
        return "torchvision"
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if arch in CONFIG_MAPPING:
        return "transformers"
    names = list(dict.fromkeys(timm.list_models() + torchvision.models.list_models(module=torchvision.models)
                               + list(CONFIG_MAPPING.keys())))
    hint = difflib.get_close_matches(arch, names, n=3)
    raise RecipeError(f"model.arch: {arch!r} is not a timm model, a torchvision model or a transformers model type"
                      + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else
                         "; see timm.list_models() (e.g. 'resnet18') or use e.g. 'vit' with model.config"))


def build_backbone(cfg: ModelConfig) -> Backbone:
    """A fresh backbone (`model.arch` + `model.config`) or a saved one (`model.pretrained`: a folder written by
    :meth:`Backbone.save`, a timm `local-dir` folder or a transformers folder)."""
    if cfg.pretrained:
        return load_backbone(cfg.pretrained, trust_remote_code=cfg.trust_remote_code)
    if not cfg.arch:
        raise RecipeError("model.arch: name an image backbone (a timm model such as 'resnet18', a torchvision model, "
                          "or a transformers model type such as 'vit'), or set model.pretrained to a saved one")
    kwargs = copy.deepcopy(cfg.config)
    small_stem = bool(kwargs.pop("small_stem", False))
    library = _library(cfg.arch, str(kwargs.pop("library", "auto")))
    if library not in LIBRARIES:
        raise RecipeError(f"model.config.library: {library!r} is not one of {', '.join(LIBRARIES)}")
    return _create(library, cfg.arch, kwargs, small_stem)


def _create(library: str, arch: str, kwargs: dict[str, Any], small_stem: bool) -> Backbone:
    where = f"{library} model {arch!r}"
    try:
        if library == "timm":
            import timm

            if not timm.is_model(arch):
                hint = difflib.get_close_matches(arch, timm.list_models(), n=3)
                raise RecipeError(f"model.arch: timm does not know {arch!r}"
                                  + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""))
            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
            dim = int(model.num_features)
            mean = tuple(model.pretrained_cfg.get("mean", IMAGENET_MEAN))
            std = tuple(model.pretrained_cfg.get("std", IMAGENET_STD))
        elif library == "torchvision":
            import torchvision

            model = torchvision.models.get_model(arch, weights=None, **kwargs)
            head = next((n for n in ("fc", "classifier", "heads", "head") if hasattr(model, n)), None)
            if head is None:
                raise RecipeError(f"model.arch: cannot find the classification head of torchvision {arch!r}")
            dim = _head_in_features(getattr(model, head))
            setattr(model, head, nn.Identity())
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            from transformers import AutoConfig, AutoModel

            model = AutoModel.from_config(AutoConfig.for_model(arch, **kwargs))
            dim = int(getattr(model.config, "hidden_size", 0) or model.config.hidden_sizes[-1])
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise RecipeError(f"model: cannot build {where} from model.config ({exc}); fix model.config") from None
    if small_stem:
        _replace_stem(model, where)
    return Backbone(model, library, arch, kwargs, dim, mean, std, small_stem)


def _head_in_features(head: nn.Module) -> int:
    linear = head if isinstance(head, nn.Linear) else next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    if linear is None:
        raise RecipeError("model.arch: the torchvision model's head has no linear layer to remove")
    return int(linear.in_features)


def load_backbone(directory: str | Path, trust_remote_code: bool = False) -> Backbone:
    """A backbone saved by :meth:`Backbone.save` (any library), or a plain timm local-dir / transformers folder."""
    from safetensors.torch import load_file

    path = Path(directory).expanduser()
    if not path.is_dir():
        raise MmsslError(f"model.pretrained {str(directory)!r} is not a folder; give a saved backbone folder")
    info_file = path / MMSSL_FILE
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        backbone = _create(info["library"], info["architecture"], info.get("model_args", {}), info.get("small_stem", False))
        if info["library"] == "transformers":
            from transformers import AutoModel

            backbone.model = AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        else:
            state = load_file(str(path / "model.safetensors"))
            try:
                backbone.model.load_state_dict(state)
            except RuntimeError as exc:
                raise MmsslError(f"model.pretrained {str(directory)!r}: weights do not fit ({str(exc)[:300]})") from None
        return backbone
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    if "architecture" in config:  # a timm folder
        import timm

        model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
        return Backbone(model, "timm", config["architecture"], config.get("model_args", {}), int(model.num_features),
                        tuple(model.pretrained_cfg.get("mean", IMAGENET_MEAN)),
                        tuple(model.pretrained_cfg.get("std", IMAGENET_STD)))
    if "model_type" in config:
        from transformers import AutoModel

        from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

        refuse_prompts()
        try:
            model = AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except ValueError as exc:
            if is_custom_code_error(exc):
                raise custom_code_error("model.pretrained", str(path), "model.trust_remote_code") from None
            raise
        dim = int(getattr(model.config, "hidden_size", 0) or model.config.hidden_sizes[-1])
        return Backbone(model, "transformers", config["model_type"], {}, dim, (0.5,) * 3, (0.5,) * 3)
    raise MmsslError(f"model.pretrained {str(directory)!r}: not a saved backbone (no {MMSSL_FILE}, timm config.json "
                     "or transformers config.json)")
