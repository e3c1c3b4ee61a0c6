"""The base of image-text objectives on open_clip models (`clip`, `captioning`).

`ImageTextObjective` does what they share: it builds the open_clip model (shared part ``"open_clip_model"``, so
objectives of one recipe train one model) and its tokenizer, loads the image-caption data (a decoded table with
captions tokenised once, or a stream decoded in loader workers), draws one caption per image and step under
batched augmented views, runs evaluation in eval mode, loads an exported folder back for ``mmssl eval``, exports
open_clip's own folder format and describes data and model.

A new image-text method is one module in `mmssl/objectives/`: subclass `ImageTextObjective` with a `Params`
subclassing `ImageTextParams` (only the keys the method uses), register it, and implement

* `build_module(model)`: the trained module around the open_clip model (keep it as ``.model``);
* `forward(module, batch)`: the loss of ``batch["image"]`` (normalised views) and ``batch["text"]`` (tokens);
* `evaluate_module(module, limit, device)` and `evaluate_export(directory)` (with `load_export_model` and
  `load_export_eval`);

and, where needed, `has_unused_parameters`, `batch_extras` (more inputs per step, e.g. generated negatives),
and `export` (``super().export`` writes the open_clip folder; add the method's files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mmssl.config import ObjectiveParams
from mmssl.data.captions import Captions, caption_rows
from mmssl.data.classes import check_classes
from mmssl.data.image_text import ImageTextSplits, ImageTextTable, load_image_text, streamed_eval_table
from mmssl.data.image_views import BatchImageViews, ImageViewsConfig
from mmssl.data.text_views.config import ViewConfig
from mmssl.data.stream_sources import ImageTransform, collate_images, data_sources, data_stream, wants_streaming
from mmssl.data.row_indices import RowIndices
from mmssl.errors import DataError, RecipeError
from mmssl.models.clip import (
    build_open_clip,
    build_tokenizer,
    context_length,
    image_size,
    load_open_clip,
    resolve_config,
    save_open_clip,
)
from mmssl.objectives.base import Objective
from mmssl.schema import PositiveInt

log = logging.getLogger(__name__)


@dataclass
class ImageTextParams(ObjectiveParams):
    """Keys every image-text objective has."""

    views: ImageViewsConfig = field(default_factory=ImageViewsConfig)
    caption_sampling: Literal["random", "first"] = "random"
    # more captions per training image: each caption's view (e.g. [{type: counterfactual}]) joins that image's
    # captions where it changes the caption, so the caption drawn each step is the original or its view
    caption_views: list[ViewConfig] = field(default_factory=list)
    class_names: list[str] | None = None
    eval_batch_size: PositiveInt = 256
    # decoded images: "memory", "disk" (memory-mapped scratch files in image_store_dir, default output_dir,
    # removed automatically), or "auto" (disk when they would take more than 2 GiB)
    image_store: Literal["auto", "memory", "disk"] = "auto"
    image_store_dir: str | None = None

    def __post_init__(self) -> None:
        if self.class_names is not None:
            check_classes(self.class_names, "objective.class_names")


class ImageTextObjective(Objective):
    """See the module docstring. After `setup`: ``model_cfg``, ``tokenizer``, ``image_size``, ``mean``, ``std``,
    ``train`` and ``train_captions`` (None when streamed), ``eval`` (None without eval data), ``class_names``,
    ``views`` and ``module``."""

    Params = ImageTextParams

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
        if wants_streaming(recipe.data) and p.caption_views:
            raise RecipeError("objective.caption_views needs the captions read whole; set data.streaming=false")
        if wants_streaming(recipe.data):  # images decoded and captions tokenised in loader workers
            self.eval, self.class_names = streamed_eval_table(recipe.data, self.image_size, recipe.seed, p.class_names)
            self.train_stream = data_stream(recipe.data, data_sources(recipe.data, "image_text"),
                                            ImageTransform(self.image_size, recipe.data.columns, self.tokenizer),
                                            recipe.seed)
        else:
            splits = load_image_text(recipe.data, self.image_size, recipe.seed, class_names=p.class_names,
                                     store=p.image_store, store_dir=Path(p.image_store_dir or recipe.output_dir))
            self.train, self.eval = splits.train, splits.eval
            self.class_names = splits.class_names
            self.train_captions = Captions(with_caption_views(self.train.captions, p.caption_views, recipe.seed),
                                           self.tokenizer)
            self.train_dataset = RowIndices(len(self.train))  # type: ignore[assignment]
            log.info("%s: %d training images (%d skipped)", self.name, len(self.train), self.train.skipped)
        self.views = BatchImageViews(p.views, self.image_size, self.mean, self.std)
        self.module = self.build_module(model)
        self.eval_dataset = RowIndices(len(self.eval)) if self.eval is not None else None  # type: ignore[assignment]
        log.info("%s: %d eval images, %d classes", self.name, len(self.eval) if self.eval is not None else 0,
                 len(self.class_names or []))

    def build_module(self, model: nn.Module) -> nn.Module:
        """The module this objective trains around the open_clip `model` (kept as its ``model`` attribute)."""
        raise NotImplementedError

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
        """``image`` (augmented views) and ``text`` (one caption's tokens per image), plus `batch_extras`."""
        draw = self.params.caption_sampling == "random"
        if "image" in batch:  # streamed: the batch carries its images and every caption's tokens
            count = batch["count"]
            rows = caption_rows(torch.cumsum(count, 0) - count, count, draw)
            return {"image": self.views(batch["image"]), "text": batch["tokens"][rows]}
        index = batch["index"]
        device = index.device
        index = index.cpu()
        images = self.views(self.train.images[index])
        rows = self.train_captions.sample_rows(index, draw)
        out = {"image": images.to(device), "text": self.train_captions.tokens[rows].to(device)}
        out.update(self.batch_extras(rows, device))
        return out

    def batch_extras(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """More inputs of a step drawn from the table's captions (`rows` of ``train_captions``, one per image);
        random draws use torch's RNG, seeded per step. None by default."""
        return {}

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        text = batch["text"]
        return text.shape[0], int((text != 0).sum())

    # -- evaluation ------------------------------------------------------------------------------
    def eval_limit(self) -> int | None:
        """Eval rows measured during training (``train.eval_batches`` batches), None for all."""
        if self.recipe.train.eval_batches is None:
            return None
        return self.recipe.train.eval_batches * self.recipe.train.batch_size

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        if self.eval is None:
            return {}
        inner = self.core(module)
        was_training = inner.training
        inner.eval()
        try:
            return self.evaluate_module(inner, self.eval_limit(), accelerator.device)
        finally:
            inner.train(was_training)

    def evaluate_module(self, module: nn.Module, limit: int | None, device: torch.device) -> dict[str, float]:
        """Metrics of `module` (this objective's, in eval mode) on the first `limit` rows of ``self.eval``."""
        raise NotImplementedError

    def load_export_model(self, directory: Path):
        """(model, tokenizer, image size, mean, std) of an exported open_clip folder, as open_clip loads it."""
        model, _, tokenizer = load_open_clip(directory)
        model.eval()
        pp = getattr(model.visual, "preprocess_cfg", {})
        mean, std = pp.get("mean", model.visual.image_mean), pp.get("std", model.visual.image_std)
        return model, tokenizer, image_size(model), mean, std

    def load_export_eval(self, size: int, class_names: list[str] | None) -> ImageTextSplits:
        """This recipe's data at `size` pixels, with eval rows (or a `DataError`)."""
        splits = load_image_text(self.recipe.data, size, self.recipe.seed, class_names=class_names)
        if splits.eval is None:
            raise DataError("no eval data: set data.eval_path, or data.eval_fraction > 0 with at least 20 examples")
        return splits

    # -- export ----------------------------------------------------------------------------------
    def export(self, module: nn.Module, directory: Path) -> None:
        """open_clip's folder (``create_model_and_transforms("local-dir:DIR")``), with a HF tokenizer's files."""
        tokenizer = self.tokenizer if self.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name") else None
        save_open_clip(module, self.model_cfg, directory, tokenizer)

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


def with_caption_views(captions: list[list[str]], views: list[ViewConfig], seed: int) -> list[list[str]]:
    """Each image's captions, followed by the views that change them (seeded per caption)."""
    if not views:
        return captions
    from mmssl.data.text_views import TextViews

    flat = [c for caps in captions for c in caps]
    made = iter(TextViews(views, seed=seed)(flat, list(range(len(flat)))))
    return [caps + [new for old, new in zip(caps, [next(made) for _ in caps]) if new != old] for caps in captions]
