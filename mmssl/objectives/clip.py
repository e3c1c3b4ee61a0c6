"""CLIP: contrastive image-text pretraining (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision") on open_clip models.

* Model: any open_clip architecture (`mmssl.models.clip`), random init or local weights.
* Data and views: image-caption pairs, one caption per image drawn at every step, batched uint8 augmentation
  (`mmssl.objectives.image_text`).
* Loss: the shared symmetric InfoNCE (`mmssl.losses.info_nce`) with the learnable, clamped logit scale
  (`LearnableTemperature`); image and text features are gathered from every process with gradient and each
  process computes the loss of its own rows against all columns (open_clip's "local loss"). NegCLIP's generated
  caption negatives (`caption_negatives`) are extra text columns of their own image.
* Evaluation (`mmssl.eval.image_text`): zero-shot accuracy over class names x prompt templates, image<->text
  recall@k, relation and attribute-binding probes.
* Export: open_clip's own folder format, ``open_clip.create_model_and_transforms("local-dir:DIR")``, plus the
  zero-shot class names and templates (``mmssl_zero_shot.json``) for ``mmssl eval DIR``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from mmssl.data.caption_negatives import head_nouns, sample_negatives
from mmssl.data.stream_sources import wants_streaming
from mmssl.distributed import gather_with_grad, local_slice_offset
from mmssl.errors import RecipeError
from mmssl.eval.image_text import evaluate_model, prompt_templates
from mmssl.losses import info_nce
from mmssl.losses.hard_negatives import NegativeShaping
from mmssl.models.captioning import is_coca
from mmssl.models.clip import ClipModule
from mmssl.objectives.base import ModelOutput
from mmssl.objectives.image_text import ImageTextObjective, ImageTextParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, PositiveFloat, PositiveInt, Range

ZERO_SHOT_FILE = "mmssl_zero_shot.json"


@dataclass
class ClipParams(ImageTextParams):
    init_temperature: PositiveFloat | None = None
    max_logit_scale: Annotated[float, Range(1, open_low=True)] = 100.0
    learn_temperature: bool = True
    gather_negatives: bool = True
    negative_shaping: NegativeShaping = field(default_factory=NegativeShaping)  # MoCHi, debiased, hardness-weighted
    # NegCLIP: per caption, up to this many generated captions with the same words and another meaning (swapped
    # objects, attributes or relation, a replaced noun; `mmssl.data.caption_negatives`) as extra text negatives
    # of that caption's image (not of the batch's other images, which might show what they say)
    caption_negatives: NonNegativeInt = 0
    caption_negative_kinds: list[Literal["relation", "objects", "attributes", "noun"]] = field(
        default_factory=lambda: ["relation", "objects", "attributes", "noun"])
    templates: list[str] | None = None  # zero-shot prompts with a '{}' for the class name
    retrieval_ks: list[PositiveInt] = field(default_factory=lambda: [1, 5, 10])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.retrieval_ks:
            raise ValueError("retrieval_ks must be a list of positive integers, e.g. [1, 5, 10]")
        for t in self.templates or []:
            if "{}" not in t:
                raise ValueError(f"template {t!r} needs a '{{}}' placeholder for the class name")


@register_objective("clip")
class Clip(ImageTextObjective):
    """See the module docstring."""

    Params = ClipParams
    output = ModelOutput("clip", "open_clip", "zero-shot-image-classification", "clip.md",
                         "zero-shot-image-classification")

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        p = self.params
        if p.caption_negatives and wants_streaming(self.recipe.data):
            raise RecipeError("objective.caption_negatives draws its replacement nouns from every training caption, "
                              "which a streamed run never holds; set data.streaming=false or caption_negatives=0")
        super().setup()
        self.nouns = head_nouns(self.train_captions.texts) if p.caption_negatives else []
        self.templates = prompt_templates(p.templates, self.recipe.data.source)

    def build_module(self, model: nn.Module) -> nn.Module:
        p = self.params
        return ClipModule(model, p.init_temperature, p.max_logit_scale, p.learn_temperature)

    def has_unused_parameters(self) -> bool:
        return is_coca(self.module.model)  # CLIP's loss leaves a CoCa model's text decoder without gradient

    def after_optimizer_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        """Keep open_clip's own ``logit_scale`` equal to the learned one (a model shared with a captioning
        objective is exported with it, whichever objective exports first)."""
        super().after_optimizer_step(module, step, total_steps)
        self.core(module).sync_logit_scale()

    # -- per step --------------------------------------------------------------------------------
    def batch_extras(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """NegCLIP: the tokens of generated negatives of the step's captions, and the row each belongs to."""
        p = self.params
        if not p.caption_negatives:
            return {}
        rng = random.Random(int(torch.randint(2**62, (1,))))  # drawn per step: a resumed run draws the same
        texts = [self.train_captions.texts[int(r)] for r in rows]
        negatives, owners = sample_negatives(texts, p.caption_negatives, p.caption_negative_kinds, self.nouns, rng)
        if not negatives:
            return {}
        return {"negative_text": self.tokenizer(negatives).to(device),
                "negative_owner": torch.tensor(owners, dtype=torch.long, device=device)}

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        negative_text = batch.get("negative_text")
        if negative_text is None:
            image, text, scale = module(batch["image"], batch["text"])
            negatives = None
        else:  # one text-tower pass over captions and their generated negatives
            image, text, scale = module(batch["image"], torch.cat([batch["text"], negative_text]))
            text, negatives = text[: batch["text"].shape[0]], text[batch["text"].shape[0] :]
        if self.params.gather_negatives:
            all_image, all_text = gather_with_grad(image), gather_with_grad(text)
            offset = local_slice_offset(image)
        else:
            all_image, all_text, offset = image, text, 0
        mask = None
        if negatives is not None:  # a generated caption is a negative of its own image only: on small data another
            # image of the batch may show what it says (a false negative)
            owner = batch["negative_owner"]
            rows = torch.arange(image.shape[0], device=owner.device)
            mask = torch.zeros(image.shape[0], all_text.shape[0] + owner.shape[0], dtype=torch.bool, device=owner.device)
            mask[:, all_text.shape[0] :] = owner[None, :] != rows[:, None]
        loss = info_nce(image, all_text, logit_scale=scale, symmetric=True, all_queries=all_image, label_offset=offset,
                        extra_negatives=negatives, false_negative_mask=mask, shaping=self.params.negative_shaping)
        out = {"loss": loss, "logit_scale": scale.detach()}
        if negatives is not None:
            out["caption_negatives"] = torch.tensor(float(negatives.shape[0]))
        return out

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate_module(self, module: nn.Module, limit: int | None, device: torch.device) -> dict[str, float]:
        self.last_diagnostics: dict = {}
        return evaluate_model(module.model, self.tokenizer, self.eval, self.class_names, self.templates,
                              self.image_size, self.mean, self.std, float(module.temperature().detach()),
                              batch_size=self.params.eval_batch_size, retrieval_ks=self.params.retrieval_ks,
                              limit=limit, device=device, diagnostics=self.last_diagnostics)

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        model, tokenizer, size, mean, std = self.load_export_model(directory)
        saved = Path(directory) / ZERO_SHOT_FILE
        meta = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
        splits = self.load_export_eval(size, self.params.class_names or meta.get("class_names"))
        templates = prompt_templates(self.params.templates or meta.get("templates"), self.recipe.data.source)
        out = evaluate_model(model, tokenizer, splits.eval, splits.class_names, templates, size, mean, std,
                             float(model.logit_scale.exp()), batch_size=self.params.eval_batch_size,
                             retrieval_ks=self.params.retrieval_ks)
        out["skipped_images"] = splits.eval.skipped
        return out

    # -- export ----------------------------------------------------------------------------------
    def export(self, module: nn.Module, directory: Path) -> None:
        super().export(module, directory)
        meta = {"class_names": self.class_names, "templates": self.templates}
        (directory / ZERO_SHOT_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
