"""What every image-only self-supervised method shares: images decoded once into a uint8 table (or streamed),
augmented views made in the step (a function of seed, epoch and row: identical after a resume), multi-crop
(`MultiCropParams`: extra low-resolution views, as SwAV and DINO use), an image backbone
(`mmssl.models.vision`), evaluation of the frozen backbone (weighted kNN, linear probe, collapse monitors; the
random-init encoder measured before training as the floor) and export in the backbone's own library format.

A method subclasses `ImageSSL`, sets `Params` (a subclass of `ImageSSLParams`), builds its module in
`build_module` and computes its loss in `loss`; a momentum target is declared in `momentum_pairs`
(`MomentumParams` adds the recipe keys of its schedule)."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from mmssl.config import ObjectiveParams
from mmssl.data.image_sources import data_description, load_images, streamed_image_splits
from mmssl.data.stream_sources import ImageTransform, collate_images, data_sources, data_stream, wants_streaming
from mmssl.data.image_views import TwoViews, TwoViewsConfig, ViewOverrides
from mmssl.data.row_indices import RowIndices
from mmssl.errors import DataError, RecipeError
from mmssl.eval.collapse import is_collapsed
from mmssl.eval.frozen_backbone import ProbeSettings, frozen_backbone_metrics
from mmssl.models.image_features import precise_bn
from mmssl.models.vision import Backbone, build_backbone, load_backbone
from mmssl.objectives.base import ModelOutput, Objective
from mmssl.schema import NonNegativeInt, PositiveFloat, PositiveInt, Range

log = logging.getLogger(__name__)

EVAL_FILE = "mmssl_image_eval.json"  # class names and the random-init floor, beside the exported backbone
FLOOR_FILE = "random_init_eval.json"  # in checkpoints: the floor measured before the first step


@dataclass
class ImageSSLParams(ObjectiveParams):
    image_size: Annotated[int, Range(8, 1024)] = 32  # images are decoded (resized, centre-cropped) to this size
    views: TwoViewsConfig = field(default_factory=TwoViewsConfig)
    projection_dim: PositiveInt = 128
    hidden_dim: PositiveInt = 512
    # evaluation of the frozen backbone
    knn_k: PositiveInt = 20
    knn_temperature: PositiveFloat = 0.07
    linear_probe: bool = True
    eval_max_images: PositiveInt | None = 5000  # labelled train images used as the kNN bank / probe train set
    eval_before: bool = True  # measure the random-init encoder first (the floor every result is compared with)
    image_store: Literal["auto", "memory", "disk"] = "auto"


class ImageSSL(Objective):
    """Base of image SSL methods; see the module docstring."""

    Params = ImageSSLParams
    output = ModelOutput("image_encoder", "timm", "image-feature-extraction", "image_encoder.md",
                         "image-classification", results=("knn_top1", "knn_top5", "linear_probe_top1",
                                                          "linear_probe_top5"))
    default_preset = "simclr"
    num_views = 2  # augmented views per image and step; 1 for pretext tasks that transform one view (RotNet)

    # -- to implement ------------------------------------------------------------------------------
    def build_module(self, backbone: Backbone) -> nn.Module:
        """The trained state: the backbone (as ``.backbone``) plus heads and momentum copies."""
        raise NotImplementedError

    def loss(self, module: nn.Module, view1: torch.Tensor, view2: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, "embedding": [B, D] what the loss compares (detached; for the collapse monitor)}``
        plus any scalars to log. `view2` is None for a method with ``num_views = 1``."""
        raise NotImplementedError

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The loss of one prepared batch (``view1``, ``view2`` and ``index``, the rows of the training images);
        `loss` unless a method needs more than the views (a memory bank needs the rows)."""
        return self.loss(module, batch["view1"], batch.get("view2"))

    def check(self, world_size: int) -> None:
        """Recipe checks that need the run's shape (e.g. enough images per step for negatives)."""

    def stream_refusal(self) -> str | None:
        """Why this method cannot train on a stream (it needs every image's row, e.g. a memory bank), or None."""
        return None

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        recipe, p, resume_dir = self.recipe, self.params, self.context.resume_dir
        self.check(self.context.world_size)
        backbone = self.shared_part("image_backbone", lambda: build_backbone(recipe.model))
        streaming = wants_streaming(recipe.data)
        if streaming:
            refusal = self.stream_refusal()
            if refusal:
                raise RecipeError(f"objective {self.name!r} cannot train on streamed data: {refusal}. Set "
                                  "data.streaming=false to read the data whole")
            splits = streamed_image_splits(recipe.data, p.image_size, recipe.seed)
        else:
            splits = load_images(recipe.data, p.image_size, recipe.seed, store=p.image_store,
                                 store_dir=Path(recipe.output_dir))
        self.train, self.eval, self.class_names = splits.train, splits.eval, splits.class_names
        self.mean, self.std = backbone.mean, backbone.std
        self.views = TwoViews(p.views, p.image_size, self.mean, self.std)
        self.small_views = None
        if getattr(p, "small_crops", 0):  # the recipe's views (both-view keys) at the small crops' size and scale
            cfg = replace(p.views, crop_scale=list(p.small_crop_scale), view1=ViewOverrides(), view2=ViewOverrides())
            self.small_views = TwoViews(cfg, p.small_crop_size, self.mean, self.std)
        # channels-last tensors: 1.5-1.7x faster convolutions forward and backward on this project's CPU (oneDNN),
        # and what tensor cores want on a GPU; a no-op for the linear heads
        self.module = self.build_module(backbone).to(memory_format=torch.channels_last)
        if streaming:
            self.train_stream = data_stream(recipe.data, data_sources(recipe.data, "images"),
                                            ImageTransform(p.image_size, recipe.data.columns), recipe.seed)
        else:
            self.train_dataset = RowIndices(len(self.train))  # type: ignore[assignment]
        # any loader: evaluate ignores it
        self.eval_dataset = RowIndices(len(self.eval)) if self._labelled_eval() else None  # type: ignore[assignment]
        self.before: dict[str, float] = {}
        saved = resume_dir / FLOOR_FILE if resume_dir is not None else None
        if saved is not None and saved.is_file():  # measured before the first step of this run
            self.before = json.loads(saved.read_text(encoding="utf-8"))
        elif p.eval_before and self.eval_dataset is not None:
            measured = self._measure(self.module.backbone, torch.device("cpu"))
            self.before = {f"random_init_{k}": v for k, v in measured.items()
                           if k in ("knn_top1", "linear_probe_top1", "feature_std_sqrt_d", "feature_effective_rank")}

    def pixel_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's normalisation mean and std as ``[1, 3, 1, 1]`` tensors on `device` (views are
        normalised with them; a pixel-space pretext task undoes and redoes it)."""
        return (torch.tensor(self.mean, device=device).view(1, 3, 1, 1),
                torch.tensor(self.std, device=device).view(1, 3, 1, 1))

    def _labelled_eval(self) -> bool:
        return self.eval is not None and bool((self.eval.labels >= 0).any()) and bool((self.train.labels >= 0).any())

    # -- per step ----------------------------------------------------------------------------------
    def collate(self, rows: list) -> dict[str, Any]:
        if self.train_stream is not None:  # decoded images from loader workers
            return collate_images(rows)
        return {"index": torch.tensor(rows, dtype=torch.long)}

    def batch_images(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images of a batch and the rows (or streamed sample ids) that seed their views."""
        if "image" in batch:
            return batch["image"], batch["id"]
        return self.train.images[batch["index"].cpu()], batch["index"].cpu()

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = (batch["image"] if "image" in batch else batch["index"]).device
        images, index = self.batch_images(batch)
        fmt = torch.channels_last
        views = [self.views.view(images, index, self.epoch, self.recipe.seed, which) for which in range(self.num_views)]
        out = {f"view{i + 1}": v.to(device, memory_format=fmt) for i, v in enumerate(views)}
        if self.small_views is not None:  # multi-crop: the small crops of every image, one batch [crops * B, ...]
            crops = [self.small_views.view(images, index, self.epoch, self.recipe.seed, 0, stream=2 + i)
                     for i in range(self.params.small_crops)]
            out["small"] = torch.cat(crops).to(device, memory_format=fmt)
        out["index"] = batch.get("index", batch.get("id"))  # which training images these are (a memory bank's rows)
        return out

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.step_loss(module, batch)
        embedding = out.pop("embedding", None)
        if embedding is not None:  # SimSiam's monitor: per-dimension std of the normalised embeddings x sqrt(d)
            z = torch.nn.functional.normalize(embedding.detach().float(), dim=1)
            out["embedding_std_sqrt_d"] = z.std(dim=0, correction=0).mean() * z.shape[1] ** 0.5
            self.last_embedding_std = float(out["embedding_std_sqrt_d"])
        return out

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        return batch["view1"].shape[0], 0

    # -- evaluation --------------------------------------------------------------------------------
    def settings(self) -> ProbeSettings:
        p = self.params
        return ProbeSettings(p.image_size, self.mean, self.std, p.knn_k, p.knn_temperature, p.linear_probe,
                             p.eval_max_images, len(self.class_names) if self.class_names else None, self.recipe.seed)

    def _measure(self, backbone: nn.Module, device: torch.device, diagnostics: dict | None = None) -> dict[str, float]:
        return frozen_backbone_metrics(backbone, self.train, self.eval, self.settings(), device, diagnostics)

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        if self.eval_dataset is None:
            return {}
        inner = self.core(module)
        self.last_diagnostics = {}
        out = self._measure(inner.backbone, accelerator.device, self.last_diagnostics)
        embedding = getattr(self, "last_embedding_std", None)
        if embedding is not None:
            out["embedding_std_sqrt_d"] = embedding
        out["collapsed"] = float(is_collapsed({"feature_std_sqrt_d": min(out["feature_std_sqrt_d"],
                                                                         embedding if embedding is not None else 1.0)}))
        if out["collapsed"]:
            log.warning("the representation has collapsed (feature_std_sqrt_d=%.4f, embedding_std_sqrt_d=%s): every "
                        "image gets nearly the same embedding", out["feature_std_sqrt_d"], embedding)
        return {**out, **self.before}

    def load_export(self, directory: Path) -> nn.Module:
        """The exported encoder, as `evaluate_export` measures it (a backbone in its library's format)."""
        return load_backbone(directory)

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        recipe, p = self.recipe, self.params
        backbone = self.load_export(directory)
        splits = load_images(recipe.data, p.image_size, recipe.seed)
        self.train, self.eval, self.class_names = splits.train, splits.eval, splits.class_names
        self.mean, self.std = backbone.mean, backbone.std
        if not self._labelled_eval():
            raise DataError("no labelled eval images: kNN and linear-probe accuracy need class labels in the train "
                            "and eval data (data.eval_path or data.eval_fraction)")
        out = self._measure(backbone, torch.device("cpu"))
        out["collapsed"] = float(is_collapsed(out))
        return out

    def save_artifacts(self, directory: Path) -> None:
        (directory / FLOOR_FILE).write_text(json.dumps(self.before), encoding="utf-8")

    # -- export ------------------------------------------------------------------------------------
    def export(self, module: nn.Module, directory: Path) -> None:
        backbone = self.core(module).backbone
        model = precise_bn(backbone, self.train.images, self.settings(), next(backbone.parameters()).device)
        if model is backbone:
            model = copy.deepcopy(backbone)
        # files in the layout every loader expects, with the size and data it was trained on
        model.to(memory_format=torch.contiguous_format).save(directory, image_size=self.params.image_size,
                                                             trained_on=data_description(self.recipe.data))
        self.write_eval_meta(directory)

    def eval_meta(self) -> dict[str, Any]:
        """What `mmssl eval` and the card read beside an export (EVAL_FILE): class names, image size, the floor."""
        return {"class_names": self.class_names, "image_size": self.params.image_size, **self.before}

    def write_eval_meta(self, directory: Path) -> None:
        (Path(directory) / EVAL_FILE).write_text(json.dumps(self.eval_meta(), indent=2), encoding="utf-8")

    def train_image_sample(self, limit: int = 4096) -> torch.Tensor:
        """At most `limit` training images (uint8), evenly spread over the table: statistics to start a model at."""
        return self.train.images[torch.linspace(0, len(self.train) - 1, min(len(self.train), limit)).long()]

    def describe(self) -> dict[str, Any]:
        backbone: Backbone = self.module.backbone
        return {
            "num_parameters": sum(p.numel() for p in backbone.parameters()),
            "trained_parameters": sum(p.numel() for p in self.module.parameters() if p.requires_grad),
            "architecture": backbone.arch,
            "backbone_library": backbone.library,
            "library_name": {"torchvision": "pytorch"}.get(backbone.library, backbone.library),
            "feature_dim": backbone.dim,
            "image_size": self.params.image_size,
            "train_images": len(self.train) if self.train_stream is None else "streamed",
            "eval_images": len(self.eval) if self.eval is not None else 0,
            "skipped_images": self.train.skipped + (self.eval.skipped if self.eval is not None else 0),
            "num_classes": len(self.class_names or []),
        }


class OwnEncoderSSL(ImageSSL):
    """Base of methods whose encoder is their own model rather than a backbone from ``model:`` (an RBM stack, a
    NADE): the recipe's model section is refused, the encoder is never shared with another objective of a
    combined recipe, and it stands where the base expects the image backbone. A subclass sets
    `encoder_description` and builds its encoder in `build_encoder`."""

    encoder_description = "its own encoder"  # for messages, e.g. "a NADE sized by objective.hidden and ..."

    def build_encoder(self) -> nn.Module:
        raise NotImplementedError

    def check(self, world_size: int) -> None:
        model = self.recipe.model
        if model.arch or model.pretrained or model.config:
            raise RecipeError(f"model: objective {self.name!r} builds its own encoder ({self.encoder_description}); "
                              "remove the model section")

    def setup(self) -> None:
        if "image_backbone" in self.parts:
            raise RecipeError(f"objective {self.name!r} trains its own encoder ({self.encoder_description}), which "
                              "no other objective of a combined recipe can share; train it alone")
        self.check(self.context.world_size)
        self.encoder = self.build_encoder()
        super().setup()

    def shared_part(self, role: str, build):  # noqa: ANN001 - as Objective.shared_part
        """The base's image backbone is this objective's own encoder (never shared with other objectives)."""
        return self.encoder if role == "image_backbone" else super().shared_part(role, build)


def check_pairs_per_step(recipe, world_size: int, method: str) -> None:
    """Contrastive methods need another image in the (global) batch to contrast with."""
    if recipe.train.batch_size * world_size < 2:
        raise RecipeError(f"train.batch_size={recipe.train.batch_size}: {method} contrasts each image with the other "
                          "images of the batch, so it needs at least 2 images per step; raise train.batch_size")


def lr_scaled_groups(module: nn.Module, scaled: dict[str, float]) -> list[dict[str, Any]]:
    """Parameter groups: no weight decay (and no LARS adaptation) on biases and normalisation weights, and the
    submodules named in `scaled` (e.g. a predictor) at their own multiple of the learning rate."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((s for prefix, s in scaled.items() if name == prefix or name.startswith(prefix + ".")), 1.0)
        decay = param.ndim >= 2 and "norm" not in name.lower() and ".bn" not in name.lower()
        groups.setdefault((scale, decay), []).append(param)
    return [{"params": params, "lr_scale": scale, **({} if decay else {"weight_decay": 0.0})}
            for (scale, decay), params in groups.items()]


@dataclass
class MomentumParams:
    """The momentum (EMA) target of BYOL and MoCo (`Objective.momentum_pairs`): tau from `momentum` to
    `momentum_final` on a cosine over the run (BYOL: 0.996 -> 1), or constant (MoCo v2: 0.999)."""

    momentum: Annotated[float, Range(0, 1)] = 0.996
    momentum_final: Annotated[float, Range(0, 1)] = 1.0
    momentum_schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class MultiCropParams:
    """Multi-crop (Caron et al. 2020): `small_crops` low-resolution crops per image besides the large views,
    made in the step like them and passed to the method as ``batch["small"]`` ([small_crops * B, C, S, S])."""

    small_crops: NonNegativeInt = 6  # low-resolution crops per image besides the large views
    small_crop_size: Annotated[int, Range(8, 1024)] = 96  # their side in pixels
    # their area as a fraction of the image, [min, max] (RandomResizedCrop's scale)
    small_crop_scale: list[Annotated[float, Range(0, 1, open_low=True)]] = field(default_factory=lambda: [0.05, 0.14])

    def __post_init__(self) -> None:
        lo, hi = self.small_crop_scale if len(self.small_crop_scale) == 2 else (0, -1)
        if not 0 < lo <= hi:
            raise ValueError("objective.small_crop_scale must be [min, max] with 0 < min <= max")
