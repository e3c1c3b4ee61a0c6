"""open_clip image-text models: build from a named or JSON architecture (random init) or load local weights,
wrap with the shared learnable temperature, and save in open_clip's own ``local-dir:`` format.

Architectures (``model.arch``):

* any name in ``open_clip.list_models()`` (``ViT-B-32``, ``RN50``, ...);
* a small architecture shipped in ``configs/clip_models/*.json`` (registered with ``open_clip.add_model_config``);
* a path to a JSON file with an open_clip model config.

``model.config`` is merged into the architecture's config (nested dicts merged key by key), e.g.
``{vision_cfg: {image_size: 48}}``. ``model.pretrained`` is a local folder in open_clip's format (as written
by :func:`save_open_clip`), or a weights file (``.safetensors``/``.pt``) for ``model.arch``.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.errors import MmsslError, RecipeError
from mmssl.losses import LearnableTemperature
from mmssl.config import ModelConfig

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
_MODEL_DIR = Path(__file__).resolve().parents[2] / "configs" / "clip_models"
_registered = False


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise RecipeError("the clip objective needs open_clip: pip install 'mmssl[clip]' (open_clip_torch)") from None
    return open_clip


def register_model_configs() -> None:
    """Make the architectures in configs/clip_models/ known to open_clip (once)."""
    global _registered
    if not _registered and _MODEL_DIR.is_dir():
        _open_clip().add_model_config(_MODEL_DIR)
    _registered = True


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(cfg: ModelConfig) -> dict[str, Any]:
    """The full open_clip model config (``model_cfg``) a recipe asks for."""
    open_clip = _open_clip()
    register_model_configs()
    if cfg.pretrained and Path(cfg.pretrained).is_dir():
        path = Path(cfg.pretrained) / CONFIG_FILE
        if not path.is_file():
            raise RecipeError(f"model.pretrained {cfg.pretrained!r}: no {CONFIG_FILE} in this folder (not an open_clip model)")
        base = json.loads(path.read_text(encoding="utf-8"))
        base = base.get("model_cfg", base)
    elif cfg.pretrained and not cfg.arch:
        raise RecipeError(f"model.pretrained {cfg.pretrained!r} is not a folder: give a saved open_clip model (for "
                          "example the output folder of another run, trained first), or set model.arch")
    elif not cfg.arch:
        raise RecipeError(
            "model.arch: name an open_clip architecture (e.g. 'mmssl-vit-tiny', 'ViT-B-32') or a JSON config file, "
            "or set model.pretrained to an open_clip folder"
        )
    elif cfg.arch.endswith(".json") or Path(cfg.arch).is_file():
        path = Path(cfg.arch)
        if not path.is_file():
            raise RecipeError(f"model.arch: JSON config {cfg.arch!r} does not exist")
        try:
            base = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RecipeError(f"model.arch: {cfg.arch!r} is not valid JSON ({exc})") from None
        base = base.get("model_cfg", base)
    else:
        base = open_clip.get_model_config(cfg.arch)
        if base is None:
            hint = difflib.get_close_matches(cfg.arch, open_clip.list_models(), n=3)
            raise RecipeError(
                f"model.arch: unknown open_clip architecture {cfg.arch!r}"
                + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "; see open_clip.list_models()")
            )
    model_cfg = merge(base, cfg.config)
    for key in ("vision_cfg", "text_cfg", "embed_dim"):
        if key not in model_cfg:
            raise RecipeError(f"model: the open_clip config lacks {key!r}")
    text = model_cfg["text_cfg"]
    if not text.get("hf_model_name") and not text.get("hf_tokenizer_name") and text.get("vocab_size", 49408) != 49408:
        raise RecipeError(
            f"model.config.text_cfg.vocab_size={text['vocab_size']}: open_clip's bundled tokenizer has 49408 tokens; "
            "keep vocab_size 49408 or use a Hugging Face text tower (text_cfg.hf_model_name)"
        )
    return model_cfg


def build_open_clip(model_cfg: dict[str, Any], cfg: ModelConfig) -> nn.Module:
    """Instantiate the model as ``open_clip.create_model`` would for this config, then load weights."""
    open_clip = _open_clip()
    from open_clip.model import CLIP, CustomTextCLIP, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg
    from dataclasses import asdict

    kwargs = copy.deepcopy(model_cfg)
    text = kwargs["text_cfg"]
    hf_text = "hf_model_name" in text
    if hf_text:  # open_clip loads the tower without trust_remote_code: refuse custom code instead of asking
        from mmssl.remote_code import refuse_prompts

        refuse_prompts()
    if hf_text:
        # A pretrained text tower from a local path is loaded unless whole-model weights follow.
        text.setdefault("hf_model_pretrained", not cfg.pretrained)
    custom = kwargs.pop("custom_text", False) or hf_text
    from open_clip import CoCa

    # CoCa (a multimodal text decoder beside the towers) where the config has one, as open_clip's factory decides
    model_class = CoCa if "multimodal_cfg" in kwargs else CustomTextCLIP if custom else CLIP
    try:
        model = model_class(**kwargs)
    except (TypeError, ValueError, OSError) as exc:
        raise RecipeError(f"model: cannot build an open_clip model from this config: {exc}") from None
    if model_class is CoCa:
        init_decoder_projection(model)
    if cfg.pretrained:
        path = Path(cfg.pretrained)
        if path.is_dir():
            from open_clip.factory import _find_checkpoint_in_dir

            found = _find_checkpoint_in_dir(path)
            if found is None:
                raise MmsslError(f"model.pretrained {cfg.pretrained!r}: no weights file in this folder")
            path = Path(found)
        if not path.is_file():
            raise MmsslError(
                f"model.pretrained {cfg.pretrained!r} is not a local open_clip folder or weights file "
                "(downloads are not supported here)"
            )
        try:
            open_clip.load_checkpoint(model, str(path))
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            raise MmsslError(f"model.pretrained {cfg.pretrained!r}: weights do not fit the model ({exc})") from None
    preprocess = asdict(PreprocessCfg())
    preprocess["size"] = model.visual.image_size
    if cfg.pretrained and Path(cfg.pretrained).is_dir():
        saved = json.loads((Path(cfg.pretrained) / CONFIG_FILE).read_text(encoding="utf-8"))
        preprocess.update(saved.get("preprocess_cfg", {}))
    set_model_preprocess_cfg(model, preprocess)
    return model


@torch.no_grad()
def init_decoder_projection(model: nn.Module) -> None:
    """Initialise a CoCa decoder's output projection (std width ** -0.5, as open_clip's
    ``MultimodalTransformer.init_parameters`` means to): open_clip 3.3 never calls that method (it would fail), so
    the projection is left as ``torch.empty`` memory and a model from scratch starts with arbitrary, sometimes
    huge, caption logits."""
    decoder = getattr(model, "text_decoder", None)
    projection = getattr(decoder, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        nn.init.normal_(projection, std=decoder.width ** -0.5)


def image_size(model: nn.Module) -> int:
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    return int(size)


def context_length(model: nn.Module) -> int:
    text = getattr(model, "text", model)
    return int(getattr(text, "context_length", 77))


class ClipModule(nn.Module):
    """An open_clip model plus the shared learnable, clamped logit scale (``mmssl.losses.LearnableTemperature``).

    open_clip's own ``logit_scale`` is frozen during training and rewritten from the temperature on export,
    so the saved model's ``logit_scale`` is the learned one.
    """

    def __init__(self, model: nn.Module, init_temperature: float | None = None, max_logit_scale: float = 100.0,
                 learnable: bool = True):
        super().__init__()
        self.model = model
        if init_temperature is None:
            init_temperature = float(torch.exp(-model.logit_scale.detach().flatten()[0]))
        init_temperature = max(init_temperature, 1.0 / max_logit_scale)
        self.temperature = LearnableTemperature(init_temperature, max_logit_scale=max_logit_scale, learnable=learnable)
        model.logit_scale.requires_grad_(False)
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.requires_grad_(False)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unnormalised image and text embeddings, and the logit scale."""
        return self.model.encode_image(image), self.model.encode_text(text), self.temperature()

    @torch.no_grad()
    def sync_logit_scale(self) -> None:
        """Copy the learned (clamped) scale into open_clip's ``logit_scale``."""
        scale = self.model.logit_scale
        scale.copy_(torch.log(self.temperature().detach()).to(scale.dtype).expand_as(scale))  # no host sync


def save_open_clip(module: nn.Module, model_cfg: dict[str, Any], directory: Path, tokenizer=None) -> None:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (``create_model_and_transforms('local-dir:DIR')``)
    of `module`'s open_clip model (``module.model``), with the learned logit scale where it has one."""
    from safetensors.torch import save_file

    if isinstance(module, ClipModule):
        module.sync_logit_scale()
    model = module.model
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    pp = dict(getattr(model.visual, "preprocess_cfg", {}))
    preprocess = {"mean": list(model.visual.image_mean), "std": list(model.visual.image_std)}
    for key in ("interpolation", "resize_mode"):
        if key in pp:
            preprocess[key] = pp[key]
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(directory))


def load_open_clip(directory: str | Path):
    """(model, preprocess_val, tokenizer) through open_clip's own loader, as a user would."""
    open_clip = _open_clip()
    name = f"local-dir:{Path(directory).resolve()}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model, preprocess, open_clip.get_tokenizer(name)


def build_tokenizer(model_cfg: dict[str, Any]):
    """The tokenizer ``open_clip.get_tokenizer`` would pick for this config (bundled BPE or a HF tokenizer)."""
    _open_clip()
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text = model_cfg.get("text_cfg", {})
    length = int(text.get("context_length", 77))
    kwargs = dict(text.get("tokenizer_kwargs") or {})
    name = text.get("hf_tokenizer_name") or ""
    if name:
        from mmssl.remote_code import custom_code_error, is_custom_code_error, refuse_prompts

        refuse_prompts()
        kwargs["trust_remote_code"] = False  # never from a config that came with a model folder
        try:
            return HFTokenizer(name, context_length=length, tokenizer_mode=text.get("tokenizer_mode"), **kwargs)
        except (OSError, ValueError) as exc:
            if is_custom_code_error(exc):
                raise custom_code_error("the text tokenizer", name, None) from None
            raise RecipeError(f"model: cannot load the text tokenizer {name!r} ({exc}); give a local folder") from None
    return SimpleTokenizer(context_length=length, **kwargs)
