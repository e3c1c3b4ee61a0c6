"""Image captioning on open_clip's CoCa architecture: the generative half of CoCa (Yu et al. 2022). Alone it
trains the image tower and the multimodal decoder to describe images; combined with `clip` over the same CoCa
model (``objectives: [{name: clip}, {name: captioning}]``) it is CoCa's contrastive + captioning recipe.

* Model: an open_clip config with a ``multimodal_cfg`` (e.g. ``mmssl-coca-tiny``, ``coca_ViT-B-32``).
* Data and views: image-caption pairs, one caption per image and step (`mmssl.objectives.image_text`).
* Loss: next-token cross-entropy of the decoder given the image tokens (teacher forcing), padding ignored.
* Evaluation (`mmssl.eval.captioning`): the caption loss, perplexity and token accuracy on the eval pairs (first
  caption, eval view); captions generated greedily for eval images, and where class names are known, how many
  of the generated captions name the image's class (``caption_names_class``).
* Export: open_clip's folder (``create_model_and_transforms("local-dir:DIR")`` gives the CoCa model) and a few
  generated captions (``generated_captions.json``); `mmssl.models.captioning.generate_captions` writes captions
  with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import nn

from mmssl.errors import DataError, RecipeError
from mmssl.eval.captioning import caption_metrics
from mmssl.models.captioning import CaptionModule, is_coca
from mmssl.objectives.base import ModelOutput
from mmssl.objectives.image_text import ImageTextObjective, ImageTextParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, Range

GENERATED_FILE = "generated_captions.json"


@dataclass
class CaptioningParams(ImageTextParams):
    generate_max_length: Annotated[int, Range(4, 77)] = 20  # tokens of a generated caption, start token included
    eval_generate_images: NonNegativeInt = 64  # eval images captioned at each evaluation


@register_objective("captioning")
class Captioning(ImageTextObjective):
    """See the module docstring."""

    Params = CaptioningParams
    output = ModelOutput("captioner", "open_clip", "image-to-text", "captioning.md", "image-to-text",
                         results=("caption_loss", "caption_perplexity", "caption_token_accuracy",
                                  "caption_names_class"))

    def build_module(self, model: nn.Module) -> nn.Module:
        if not is_coca(model):
            raise RecipeError(f"objective captioning needs a CoCa model (an open_clip config with multimodal_cfg, e.g. "
                              f"model.arch: mmssl-coca-tiny or coca_ViT-B-32), not {type(model).__name__}")
        return CaptionModule(model)

    def has_unused_parameters(self) -> bool:
        return True  # the caption loss leaves the towers' contrastive poolers and projections without gradient

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return module(batch["image"], batch["text"])

    # -- evaluation ------------------------------------------------------------------------------
    def _metrics(self, model: nn.Module, tokenizer, table, class_names, size: int, mean, std,
                 limit: int | None = None, device: torch.device | str = "cpu") -> tuple[dict[str, float], list[dict]]:
        p = self.params
        return caption_metrics(model, tokenizer, table, class_names, size, mean, std, batch_size=p.eval_batch_size,
                               generate_images=p.eval_generate_images, generate_max_length=p.generate_max_length,
                               limit=limit, device=device)

    def evaluate_module(self, module: nn.Module, limit: int | None, device: torch.device) -> dict[str, float]:
        out, self.generated = self._metrics(module.model, self.tokenizer, self.eval, self.class_names,
                                            self.image_size, self.mean, self.std, limit, device)
        return out

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        model, tokenizer, size, mean, std = self.load_export_model(directory)
        if not is_coca(model):
            raise DataError(f"{str(directory)!r} holds a {type(model).__name__}, not a CoCa captioner")
        splits = self.load_export_eval(size, self.params.class_names)
        out, _ = self._metrics(model, tokenizer, splits.eval, splits.class_names, size, mean, std)
        return out

    # -- export ----------------------------------------------------------------------------------
    def export(self, module: nn.Module, directory: Path) -> None:
        super().export(module, directory)
        samples = getattr(self, "generated", [])
        (directory / GENERATED_FILE).write_text(json.dumps(samples[:16], indent=2), encoding="utf-8")
