"""CLIP: contrastive image-text pretraining (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision") on open_clip models.

* Model: any open_clip architecture (`mmssl.models.clip`), random init or local weights.
* Data: image-caption pairs (`mmssl.data.image_text`); one caption per image is drawn at every step.
* Views: batched uint8 augmentation (`mmssl.data.image_views`).
* Loss: the shared symmetric InfoNCE (`mmssl.losses.info_nce`) with the learnable, clamped logit scale
  (`LearnableTemperature`); image and text features are gathered from every process with gradient and each
  process computes the loss of its own rows against all columns (open_clip's "local loss").
* Evaluation: zero-shot accuracy over class names x prompt templates, image<->text recall@k.
* Export: open_clip's own folder format, ``open_clip.create_model_and_transforms("local-dir:DIR")``.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.data.image_text import ImageTextTable, load_image_text, streamed_eval_table
from mmssl.data.stream_sources import ImageTransform, collate_images, data_sources, data_stream, wants_streaming
from mmssl.data.image_views import BatchImageViews, ImageViewsConfig, eval_view
from mmssl.data.world import POSITIONS, relation_probes
from mmssl.errors import DataError, RecipeError
from mmssl.data.classes import check_classes
from mmssl.eval.zero_shot import DEFAULT_TEMPLATES, class_embeddings, image_text_retrieval, zero_shot_accuracy
from mmssl.data.caption_negatives import head_nouns, sample_negatives
from mmssl.eval.embeddings import pair_diagnostics
from mmssl.distributed import gather_with_grad, local_slice_offset
from mmssl.losses import info_nce
from mmssl.losses.hard_negatives import NegativeShaping
from mmssl.models.clip import (
    ClipModule,
    build_open_clip,
    build_tokenizer,
    context_length,
    image_size,
    load_open_clip,
    resolve_config,
    save_open_clip,
)
from mmssl.objectives.base import ModelOutput, Objective
from mmssl.config import ObjectiveParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeInt, PositiveFloat, PositiveInt, Range

log = logging.getLogger(__name__)

# Prompts that read like the built-in world's captions ("there is a red circle on the left"), averaged over
# the positions an object can take (prompt ensembling, as CLIP does with "a photo of a {}" variants).
WORLD_TEMPLATES = [f"there is {{article}} {{}} {position}" for position in POSITIONS]
ZERO_SHOT_FILE = "mmssl_zero_shot.json"


@dataclass
class ClipParams(ObjectiveParams):
    views: ImageViewsConfig = field(default_factory=ImageViewsConfig)
    caption_sampling: Literal["random", "first"] = "random"
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
    class_names: list[str] | None = None
    templates: list[str] | None = None
    retrieval_ks: list[PositiveInt] = field(default_factory=lambda: [1, 5, 10])
    eval_batch_size: PositiveInt = 256
    # decoded images: "memory", "disk" (memory-mapped scratch files in image_store_dir, default output_dir,
    # removed automatically), or "auto" (disk when they would take more than 2 GiB)
    image_store: Literal["auto", "memory", "disk"] = "auto"
    image_store_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.retrieval_ks:
            raise ValueError("retrieval_ks must be a list of positive integers, e.g. [1, 5, 10]")
        if self.class_names is not None:
            check_classes(self.class_names, "objective.class_names")
        for t in self.templates or []:
            if "{}" not in t:
                raise ValueError(f"template {t!r} needs a '{{}}' placeholder for the class name")


class _Indices(torch.utils.data.Dataset):
    """Rows are example indices; images and captions are gathered in `prepare_batch` in one step."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> int:
        return i


class Captions:
    """All captions tokenised once: example i owns rows ``start[i] : start[i] + count[i]`` of ``tokens``."""

    def __init__(self, captions: list[list[str]], tokenizer, chunk: int = 4096):
        flat = [c for caps in captions for c in caps]
        self.texts = flat
        self.tokens = torch.cat([tokenizer(flat[i : i + chunk]) for i in range(0, len(flat), chunk)])
        self.count = torch.tensor([len(c) for c in captions], dtype=torch.long)
        self.start = torch.cumsum(self.count, 0) - self.count

    def sample(self, index: torch.Tensor, random: bool) -> torch.Tensor:
        """Tokens of one caption per example (`rows` of the same draw: `sample_rows`)."""
        return self.tokens[self.sample_rows(index, random)]

    def sample_rows(self, index: torch.Tensor, random: bool) -> torch.Tensor:
        return caption_rows(self.start[index], self.count[index], random)


def caption_rows(start: torch.Tensor, count: torch.Tensor, random: bool) -> torch.Tensor:
    """One caption row per example that owns rows ``start : start + count``: a random one or the first."""
    if not random:
        return start
    return start + (torch.rand(count.shape[0], device=count.device) * count).long().clamp_max(count - 1)


@register_objective("clip")
class Clip(Objective):
    Params = ClipParams
    output = ModelOutput("clip", "open_clip", "zero-shot-image-classification", "clip.md",
                         "zero-shot-image-classification")

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        recipe, p = self.recipe, self.params
        self.model_cfg = resolve_config(recipe.model)
        model = self.shared_part("open_clip_model", lambda: build_open_clip(self.model_cfg, recipe.model))
        self.tokenizer = self._tokenizer()
        self.image_size = image_size(model)
        self.mean, self.std = tuple(model.visual.image_mean), tuple(model.visual.image_std)
        self.train: ImageTextTable | None = None
        self.train_captions: Captions | None = None
        self.nouns: list[str] = []
        if wants_streaming(recipe.data):  # images decoded and captions tokenised in loader workers
            if getattr(p, "caption_negatives", 0):
                raise RecipeError("objective.caption_negatives draws its replacement nouns from every training caption, "
                                  "which a streamed run never holds; set data.streaming=false or caption_negatives=0")
            self.eval, self.class_names = streamed_eval_table(recipe.data, self.image_size, recipe.seed, p.class_names)
            self.train_stream = data_stream(recipe.data, data_sources(recipe.data, "image_text"),
                                            ImageTransform(self.image_size, recipe.data.columns, self.tokenizer),
                                            recipe.seed)
        else:
            splits = load_image_text(recipe.data, self.image_size, recipe.seed, class_names=p.class_names,
                                     store=p.image_store, store_dir=Path(p.image_store_dir or recipe.output_dir))
            self.train, self.eval = splits.train, splits.eval
            self.class_names = splits.class_names
            self.train_captions = Captions(self.train.captions, self.tokenizer)
            self.nouns = head_nouns(self.train_captions.texts) if getattr(p, "caption_negatives", 0) else []
            self.train_dataset = _Indices(len(self.train))  # type: ignore[assignment]
            log.info("clip: %d training images (%d skipped)", len(self.train), self.train.skipped)
        self.templates = p.templates or (WORLD_TEMPLATES if recipe.data.source == "world" else DEFAULT_TEMPLATES)
        self.views = BatchImageViews(p.views, self.image_size, self.mean, self.std)
        self.module = self.build_module(model)
        self.eval_dataset = _Indices(len(self.eval)) if self.eval is not None else None  # type: ignore[assignment]
        log.info("clip: %d eval images, %d classes", len(self.eval) if self.eval is not None else 0,
                 len(self.class_names or []))

    def has_unused_parameters(self) -> bool:
        from mmssl.models.captioning import is_coca

        return is_coca(self.module.model)  # CLIP's loss leaves a CoCa model's text decoder without gradient

    def build_module(self, model: nn.Module) -> nn.Module:
        p = self.params
        return ClipModule(model, p.init_temperature, p.max_logit_scale, p.learn_temperature)

    def after_optimizer_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        """Keep open_clip's own ``logit_scale`` equal to the learned one (a model shared with a captioning
        objective is exported with it, whichever objective exports first)."""
        super().after_optimizer_step(module, step, total_steps)
        self.core(module).sync_logit_scale()

    def _tokenizer(self):
        text = self.model_cfg.get("text_cfg", {})
        pretrained = self.recipe.model.pretrained
        if text.get("hf_tokenizer_name") and pretrained and (Path(pretrained) / "tokenizer_config.json").is_file():
            return build_tokenizer({**self.model_cfg, "text_cfg": {**text, "hf_tokenizer_name": pretrained}})
        return build_tokenizer(self.model_cfg)

    # -- per step --------------------------------------------------------------------------------
    def collate(self, rows: list) -> dict[str, Any]:
        if self.train_stream is not None:  # decoded images and caption tokens from loader workers
            return collate_images(rows)
        return {"index": torch.tensor(rows, dtype=torch.long)}

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "image" in batch:  # streamed: the batch carries its images and every caption's tokens
            count = batch["count"]
            rows = caption_rows(torch.cumsum(count, 0) - count, count, self.params.caption_sampling == "random")
            return {"image": self.views(batch["image"]), "text": batch["tokens"][rows]}
        index = batch["index"]
        device = index.device
        index = index.cpu()
        images = self.views(self.train.images[index])
        rows = self.train_captions.sample_rows(index, self.params.caption_sampling == "random")
        out = {"image": images.to(device), "text": self.train_captions.tokens[rows].to(device)}
        p = self.params
        if getattr(p, "caption_negatives", 0):  # drawn from torch's RNG, seeded per step: a resumed run draws the same
            rng = random.Random(int(torch.randint(2**62, (1,))))
            texts = [self.train_captions.texts[int(r)] for r in rows]
            negatives, owners = sample_negatives(texts, p.caption_negatives, p.caption_negative_kinds, self.nouns, rng)
            if negatives:
                out["negative_text"] = self.tokenizer(negatives).to(device)
                out["negative_owner"] = torch.tensor(owners, dtype=torch.long, device=device)
        return out

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

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        text = batch["text"]
        return text.shape[0], int((text != 0).sum())

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        if self.eval is None:
            return {}
        inner: ClipModule = self.core(module)
        limit = None
        if self.recipe.train.eval_batches is not None:
            limit = self.recipe.train.eval_batches * self.recipe.train.batch_size
        was_training = inner.training
        inner.eval()
        try:
            self.last_diagnostics: dict = {}
            out = evaluate_model(
                inner.model, self.tokenizer, self.eval, self.class_names, self.templates, self.image_size,
                self.mean, self.std, float(inner.temperature().detach()), self.params, limit, accelerator.device,
                self.last_diagnostics,
            )
        finally:
            inner.train(was_training)
        return out

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        model, _, tokenizer = load_open_clip(directory)
        model.eval()
        recipe = self.recipe
        size = image_size(model)
        saved = Path(directory) / ZERO_SHOT_FILE
        meta = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
        class_names = self.params.class_names or meta.get("class_names")
        splits = load_image_text(recipe.data, size, recipe.seed, class_names=class_names)
        if splits.eval is None:
            raise DataError("no eval data: set data.eval_path, or data.eval_fraction > 0 with at least 20 examples")
        templates = self.params.templates or meta.get("templates") or (
            WORLD_TEMPLATES if recipe.data.source == "world" else DEFAULT_TEMPLATES)
        pp = getattr(model.visual, "preprocess_cfg", {})
        mean, std = pp.get("mean", model.visual.image_mean), pp.get("std", model.visual.image_std)
        out = evaluate_model(model, tokenizer, splits.eval, splits.class_names, templates, size, mean, std,
                             float(model.logit_scale.exp()), self.params, None, torch.device("cpu"))
        out["skipped_images"] = splits.eval.skipped
        return out

    # -- export ----------------------------------------------------------------------------------
    def export(self, module: nn.Module, directory: Path) -> None:
        tokenizer = self.tokenizer if self.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name") else None
        save_open_clip(module, self.model_cfg, directory, tokenizer)
        meta = {"class_names": self.class_names, "templates": self.templates}
        (directory / ZERO_SHOT_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def describe(self) -> dict[str, Any]:
        model = self.module.model
        skipped = (self.train.skipped if self.train is not None else 0) + (self.eval.skipped if self.eval is not None else 0)
        reasons: dict[str, int] = dict(self.train.skipped_reasons) if self.train is not None else {}
        if self.eval is not None:
            for k, v in self.eval.skipped_reasons.items():
                reasons[k] = reasons.get(k, 0) + v
        return {
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "architecture": self.recipe.model.arch or self.recipe.model.pretrained,
            "model_class": type(model).__name__,
            "image_size": self.image_size,
            "context_length": context_length(model),
            "train_images": len(self.train) if self.train is not None else "streamed",
            "train_captions": sum(len(c) for c in self.train.captions) if self.train is not None else "streamed",
            "eval_images": len(self.eval) if self.eval is not None else 0,
            "skipped_images": skipped,
            "skipped_reasons": reasons,
            "num_classes": len(self.class_names or []),
        }


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    tokenizer,
    table: ImageTextTable,
    class_names: list[str] | None,
    templates: list[str],
    size: int,
    mean,
    std,
    logit_scale: float,
    params: ClipParams,
    limit: int | None,
    device,
    diagnostics: dict | None = None,
) -> dict[str, float]:
    """Zero-shot accuracy, image<->text retrieval and the contrastive loss (first caption) on `table`;
    `diagnostics`, if given, receives the report's arrays (zero-shot confusion matrix, similarity histograms)."""
    n = len(table) if limit is None else min(limit, len(table))
    bs = params.eval_batch_size
    feats = torch.cat([
        model.encode_image(eval_view(table.images[i : i + bs], size, mean, std).to(device)).float().cpu()
        for i in range(0, n, bs)
    ])

    def encode_text(texts: list[str]) -> torch.Tensor:
        return torch.cat([model.encode_text(tokenizer(texts[i : i + bs]).to(device)).float().cpu()
                          for i in range(0, len(texts), bs)])

    captions = table.captions[:n]
    out: dict[str, float] = {}
    first = encode_text([c[0] for c in captions])
    losses = [
        info_nce(feats[i : i + bs], first[i : i + bs], logit_scale=logit_scale, symmetric=True)
        for i in range(0, n, bs) if min(bs, n - i) >= 2
    ]
    if losses:
        out["loss"] = float(torch.stack(losses).mean())
    out["logit_scale"] = logit_scale
    labels = table.labels[:n].clone()
    labels[~table.zero_shot[:n]] = -1
    if class_names and len(class_names) >= 2 and bool((labels >= 0).any()):
        classes = class_embeddings(encode_text, class_names, templates)
        out.update(zero_shot_accuracy(feats, labels, classes))
        if diagnostics is not None:
            keep = labels >= 0
            predicted = (F.normalize(feats[keep], dim=-1) @ classes.T.cpu()).argmax(1)
            confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.long)
            confusion.index_put_((labels[keep], predicted), torch.ones_like(predicted), accumulate=True)
            diagnostics["confusion_matrix"] = confusion.tolist()
            diagnostics["class_names"] = list(class_names)
    out.update(image_text_retrieval(feats, captions, encode_text, params.retrieval_ks))
    out.update(compositional_accuracy(feats, captions, encode_text))
    if diagnostics is not None:
        image, text = F.normalize(feats, dim=-1), F.normalize(first, dim=-1)
        diagnostics.update(pair_diagnostics(image, text, torch.cat([image, text])))
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}


def compositional_accuracy(feats: torch.Tensor, captions: list[list[str]], encode_text) -> dict[str, float]:
    """On two-object world images: how often the image scores its caption above the same words with the
    objects swapped (`relation_accuracy`) and with the colours swapped between the objects
    (`attribute_binding_accuracy`); chance 0.5. Empty for data without such captions."""
    rows, true, objects, attributes = [], [], [], []
    for i, caps in enumerate(captions):
        probes = relation_probes(caps[0]) if caps else None
        if probes is not None:
            rows.append(i)
            true.append(caps[0])
            objects.append(probes[0])
            attributes.append(probes[1])
    if not rows:
        return {}
    image = torch.nn.functional.normalize(feats[rows], dim=-1)

    def score(texts: list[str], which: list[int]) -> torch.Tensor:
        return (image[which] * torch.nn.functional.normalize(encode_text(texts), dim=-1)).sum(-1)

    every = list(range(len(rows)))
    right = score(true, every)
    out = {"relation_accuracy": float((right > score(objects, every)).float().mean()),
           "relation_probes": float(len(rows))}
    kept = [k for k, a in enumerate(attributes) if a is not None]
    if kept:
        swapped = score([attributes[k] for k in kept], kept)
        out["attribute_binding_accuracy"] = float((right[kept] > swapped).float().mean())
    return out
