"""Image captioning on open_clip's CoCa architecture: the generative half of CoCa (Yu et al. 2022). Alone it
trains the image tower and the multimodal decoder to describe images; combined with `clip` over the same CoCa
model (``objectives: [{name: clip}, {name: captioning}]``) it is CoCa's contrastive + captioning recipe.

* Model: an open_clip config with a ``multimodal_cfg`` (e.g. ``mmssl-coca-tiny``, ``coca_ViT-B-32``).
* Data and views: as `clip` (image-caption pairs, one caption per image and step).
* Loss: next-token cross-entropy of the decoder given the image tokens (teacher forcing), padding ignored.
* Evaluation: the caption loss, perplexity and token accuracy on the eval pairs (first caption, eval view);
  captions generated greedily for eval images, and where class names are known, how many of the generated
  captions name the image's class (``caption_names_class``).
* Export: open_clip's folder (``create_model_and_transforms("local-dir:DIR")`` gives the CoCa model);
  `mmssl.models.captioning.generate_captions` writes captions with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from mmssl.config import ObjectiveParams
from mmssl.data.image_text import load_image_text
from mmssl.data.image_views import ImageViewsConfig, eval_view
from mmssl.errors import DataError, RecipeError
from mmssl.models.captioning import CaptionModule, decode, generate_captions, is_coca
from mmssl.models.clip import load_open_clip, save_open_clip
from mmssl.objectives.base import ModelOutput
from mmssl.objectives.clip import Clip
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, PositiveInt, Range

GENERATED_FILE = "generated_captions.json"


@dataclass
class CaptioningParams(ObjectiveParams):
    views: ImageViewsConfig = field(default_factory=ImageViewsConfig)
    caption_sampling: Literal["random", "first"] = "random"
    class_names: list[str] | None = None
    generate_max_length: Annotated[int, Range(4, 77)] = 20  # tokens of a generated caption, start token included
    eval_generate_images: NonNegativeInt = 64  # eval images captioned at each evaluation
    eval_batch_size: PositiveInt = 256
    image_store: Literal["auto", "memory", "disk"] = "auto"
    image_store_dir: str | None = None
    templates: list[str] | None = None  # unused (zero-shot prompts are the clip objective's)


@register_objective("captioning")
class Captioning(Clip):
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

    def after_optimizer_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        pass

    def has_unused_parameters(self) -> bool:
        return True  # the caption loss leaves the towers' contrastive poolers and projections without gradient

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return module(batch["image"], batch["text"])

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        if self.eval is None:
            return {}
        inner = self.core(module)
        limit = None
        if self.recipe.train.eval_batches is not None:
            limit = self.recipe.train.eval_batches * self.recipe.train.batch_size
        out, self.generated = caption_metrics(inner.model, self.tokenizer, self.eval, self.class_names,
                                              self.image_size, self.mean, self.std, self.params, limit,
                                              accelerator.device)
        return out

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        model, _, tokenizer = load_open_clip(directory)
        if not is_coca(model):
            raise DataError(f"{str(directory)!r} holds a {type(model).__name__}, not a CoCa captioner")
        size = model.visual.image_size
        size = size if isinstance(size, int) else size[0]
        splits = load_image_text(self.recipe.data, size, self.recipe.seed, class_names=self.params.class_names)
        if splits.eval is None:
            raise DataError("no eval data: set data.eval_path, or data.eval_fraction > 0 with at least 20 examples")
        mean, std = model.visual.image_mean, model.visual.image_std
        out, _ = caption_metrics(model, tokenizer, splits.eval, splits.class_names, size, mean, std, self.params, None,
                                 torch.device("cpu"))
        return out

    # -- export ----------------------------------------------------------------------------------
    def export(self, module: nn.Module, directory: Path) -> None:
        import json

        save_open_clip(module, self.model_cfg, directory)
        samples = getattr(self, "generated", [])
        (directory / GENERATED_FILE).write_text(json.dumps(samples[:16], indent=2), encoding="utf-8")


def names_class(caption: str, class_name: str) -> bool:
    """Whether `caption` says `class_name` as whole words, ignoring case and '_' ("golden_retriever")."""
    words = [re.escape(w) for w in class_name.replace("_", " ").lower().split()]
    return bool(words) and re.search(r"\b" + r"\s+".join(words) + r"\b", caption.lower()) is not None


@torch.no_grad()
def caption_metrics(model: nn.Module, tokenizer, table, class_names: list[str] | None, size: int, mean, std,
                    params: CaptioningParams, limit: int | None, device) -> tuple[dict[str, float], list[dict]]:
    """Teacher-forced caption loss (first caption of each image) and greedy captions of a few images."""
    n = len(table) if limit is None else min(limit, len(table))
    was_training = model.training
    model.eval()
    captioner = CaptionModule(model)
    total = torch.zeros(3, dtype=torch.float64)  # loss x tokens, correct tokens, tokens
    try:
        for start in range(0, n, params.eval_batch_size):
            rows = range(start, min(n, start + params.eval_batch_size))
            images = eval_view(table.images[list(rows)], size, mean, std).to(device)
            text = tokenizer([table.captions[i][0] for i in rows]).to(device)
            out = captioner(images, text)
            tokens = float((text[:, 1:] != 0).sum())
            total += torch.tensor([float(out["loss"]) * tokens, float(out["token_accuracy"]) * tokens, tokens],
                                  dtype=torch.float64)
        count = min(n, params.eval_generate_images)
        generated: list[dict] = []
        named = 0
        if count:
            images = eval_view(table.images[:count], size, mean, std).to(device)
            texts = decode(tokenizer, generate_captions(model, images, params.generate_max_length))
            for i, text in enumerate(texts):
                label = int(table.labels[i]) if class_names else -1
                entry = {"generated": text, "reference": table.captions[i][0]}
                if label >= 0:
                    entry["class"] = class_names[label]
                    named += names_class(text, class_names[label])
                generated.append(entry)
    finally:
        model.train(was_training)
    loss = float(total[0] / max(total[2], 1.0))
    out = {"caption_loss": loss, "caption_perplexity": math.exp(min(loss, 50.0)),
           "caption_token_accuracy": float(total[1] / max(total[2], 1.0))}
    labelled = [g for g in generated if "class" in g]
    if labelled:
        out["caption_names_class"] = named / len(labelled)
    return out, generated
