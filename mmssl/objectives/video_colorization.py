"""Tracking emerges by colourising videos (Vondrick, Shrivastava, Fathi, Guadarrama & Murphy 2018).

A backbone sees grey frames (Lab lightness) and embeds each into a feature map; the colours of a target frame are
predicted by pointing into a reference frame of the same video: every target position copies the reference's
colours with the weights ``softmax_j(f_i . g_j / temperature)`` over the reference positions
(`mmssl.losses.colour_pointer`). Colours are ``objective.colours`` k-means clusters of the training frames' ab
values at the features' grid (the paper's 16), and the loss is the cross-entropy of the target's clusters under
the copied distribution. Nothing but the features can carry the colour over, so they have to tell the objects
apart and find each again after it moved.

Data: the built-in world's videos (`mmssl.data.world_video`): ``data.world`` gives the seed, the colours and
shapes and the number of training videos (``num_scenes``; the eval videos are a fifth as many, held out); the
objective gives their length, size and objects. A training example is a video: one (reference, target) pair of
frames at most ``max_gap`` apart, in either order, drawn in the step.

Evaluation (`mmssl.eval.tracking`), with no fine-tuning: the first frame's instance masks are propagated through
each eval video by the same pointer (``propagation: previous``: recursively from the previous predicted frame, as
the paper does; ``first``: always from frame 0) and scored by mask IoU per frame against the copy of the first
mask and raw-pixel (lightness) pointing; the random-init encoder is measured first, as the floor. The IoU curves
are ``diagnostics.tracking_iou_curve`` in metrics.json; ``tracking.png`` in the output folder shows the tracked
masks of a few eval videos.

Export: the backbone as a timm folder (``load_backbone`` or timm; its ``forward_features`` gives the map) plus
``pointer_head.safetensors`` (the 1x1 convolution to the embedding, and the colour clusters) and
``video_colorization.json`` (temperature, input transform); ``mmssl eval DIR`` tracks the recipe's eval videos
with it again (e.g. ``objective.propagation=first``). Streamed data is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.config import ObjectiveParams
from mmssl.data.lab import rgb_to_lab
from mmssl.data.image_sources import data_description
from mmssl.data.row_indices import RowIndices
from mmssl.data.stream_sources import wants_streaming
from mmssl.data.world_video import Videos, VideoWorld, world_videos
from mmssl.errors import MmsslError, RecipeError
from mmssl.eval.tracking import tracking_curves, tracking_figure
from mmssl.losses.colour_pointer import colour_pointer_loss
from mmssl.models.kmeans import kmeans
from mmssl.models.vision import Backbone, build_backbone, load_backbone
from mmssl.objectives.base import ModelOutput, Objective
from mmssl.registry import register_objective
from mmssl.schema import PositiveFloat, PositiveInt, Probability, Range

FLOOR_FILE = "random_init_tracking.json"
CONFIG_FILE = "video_colorization.json"
HEAD_FILE = "pointer_head.safetensors"
FIGURE_FILE = "tracking.png"


@dataclass
class VideoColorizationParams(ObjectiveParams):
    image_size: Annotated[int, Range(16, 256)] = 32  # frame side in pixels
    frames: Annotated[int, Range(2, 64)] = 8  # frames per video
    max_objects: Annotated[int, Range(1, 6)] = 3  # each video shows 1 to this many objects
    same_colour: Probability = 0.25  # chance that an object copies an earlier one's colour (else random, may repeat)
    occluder: Probability = 0.0  # chance of a static grey bar in front of the objects
    max_gap: PositiveInt = 4  # frames between the reference and the target (either order)
    colours: Annotated[int, Range(2, 313)] = 16  # k-means clusters of ab (the paper's 16)
    kmeans_pixels: PositiveInt = 50_000  # training pixels (at the features' grid) that the clusters are fitted to
    embed_dim: PositiveInt = 64  # the pointer's features: a 1x1 convolution of the backbone's map
    temperature: PositiveFloat = 0.05  # of the softmax over reference positions (features are L2-normalised)
    pixel_temperature: PositiveFloat = 0.001  # the raw-pixel baseline's (squared lightness distances, L / 100)
    propagation: Literal["previous", "first"] = "previous"  # track from the previous predicted frame, or frame 0
    eval_videos: PositiveInt | None = None  # cap on the eval videos tracked (default: all)
    figure_videos: Annotated[int, Range(0, 16)] = 2  # eval videos drawn in tracking.png
    eval_before: bool = True  # track with the random-init encoder first (the floor)


class VideoColorizationModule(nn.Module):
    """Normalised grey frames ``[B, 3, H, W]`` -> L2-normalised pointer features ``[B, embed_dim, h, w]``; the
    colour clusters (ab centres ``[K, 2]``) are a buffer, so checkpoints and the export carry them."""

    def __init__(self, backbone: Backbone, embed_dim: int, centroids: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.embed = nn.Conv2d(int(backbone.model.num_features), embed_dim, kernel_size=1)
        self.register_buffer("centroids", centroids.float())

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.backbone.model.forward_features(grey)).float(), dim=1)


@register_objective("video_colorization")
class VideoColorization(Objective):
    Params = VideoColorizationParams
    output = ModelOutput("image_encoder", "timm", "image-feature-extraction", "video_tracker.md",
                         "video-object-segmentation", results=("tracking_iou_learned",))

    # -- setup -------------------------------------------------------------------------------------
    def world(self) -> VideoWorld:
        p, w = self.params, self.recipe.data.world
        return VideoWorld(num_videos=w.num_scenes, frames=p.frames, size=p.image_size, max_objects=p.max_objects,
                          num_colours=w.num_colours, num_shapes=w.num_shapes, same_colour=p.same_colour,
                          occluder=p.occluder, seed=w.seed)

    def setup(self) -> None:
        recipe, p = self.recipe, self.params
        if recipe.data.source != "world" or wants_streaming(recipe.data):
            raise RecipeError("objective 'video_colorization' trains on the built-in world's videos: set "
                              "data.source: world (and data.streaming: false)")
        if p.max_gap >= p.frames:
            raise RecipeError(f"objective.max_gap={p.max_gap} must be smaller than objective.frames={p.frames}")
        backbone = self.shared_part("image_backbone", lambda: build_backbone(recipe.model))
        if backbone.library != "timm" or not hasattr(backbone.model, "forward_features"):
            raise RecipeError("model: objective 'video_colorization' points with a feature map, which it takes from "
                              "a timm backbone's forward_features; use a timm model (e.g. arch: resnet18 with "
                              "config.output_stride: 8)")
        self.mean, self.std = backbone.mean, backbone.std
        self.train_videos, self.eval_videos = world_videos(self.world(), "train"), self.held_out_videos()
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            self.grid = tuple(backbone.model.forward_features(torch.zeros(1, 3, p.image_size, p.image_size)).shape[-2:])
            backbone.train(was)
        self.module = VideoColorizationModule(backbone, p.embed_dim, self.colour_clusters())
        self.train_dataset = RowIndices(len(self.train_videos))  # type: ignore[assignment]
        self.kept: list[dict[str, torch.Tensor]] = []
        self.before: dict[str, float] = {}
        resume_dir = self.context.resume_dir
        saved = resume_dir / FLOOR_FILE if resume_dir is not None else None
        if saved is not None and saved.is_file():
            self.before = json.loads(saved.read_text(encoding="utf-8"))
        elif p.eval_before:
            measured = self.track(self.module, torch.device("cpu"), keep=0)
            self.before = {"random_init_tracking_iou_learned": measured["tracking_iou_learned"]}

    def held_out_videos(self) -> Videos:
        """The eval videos, at most ``objective.eval_videos`` of them."""
        videos, n = world_videos(self.world(), "eval"), self.params.eval_videos
        if n is None or n >= len(videos):
            return videos
        return Videos(videos.frames[:n], videos.labels[:n], videos.objects[:n], videos.colours[:n])

    def colour_clusters(self) -> torch.Tensor:
        """``[K, 2]`` k-means centres of the training frames' ab values at the features' grid."""
        p = self.params
        frames = self.train_videos.frames.flatten(0, 1)
        per_frame = self.grid[0] * self.grid[1]
        picked = torch.linspace(0, len(frames) - 1, min(len(frames), max(1, p.kmeans_pixels // per_frame))).long()
        ab = self.lab(frames[picked])[1].permute(0, 2, 3, 1).reshape(-1, 2)
        if len(ab) < p.colours:
            raise RecipeError(f"objective.colours={p.colours} clusters need at least as many training pixels; raise "
                              "objective.kmeans_pixels or data.world.num_scenes")
        centroids, _ = kmeans(ab, p.colours, seed=self.recipe.seed, backend="torch")
        return centroids

    def lab(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(grey input normalised like the backbone's images ``[B, 3, H, W]``, ab averaged onto the features' grid
        ``[B, 2, h, w]``) of uint8 RGB frames ``[B, 3, H, W]``."""
        lab = rgb_to_lab(frames.float() / 255)
        mean = torch.tensor(self.mean, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=frames.device).view(1, 3, 1, 1)
        grey = ((lab[:, :1] / 100).expand(-1, 3, -1, -1) - mean) / std
        return grey.contiguous(), F.adaptive_avg_pool2d(lab[:, 1:], self.grid)

    # -- per step ----------------------------------------------------------------------------------
    def collate(self, rows: list[int]) -> dict[str, Any]:
        return {"index": torch.tensor(rows, dtype=torch.long)}

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One (reference, target) pair of frames per video: 1..max_gap apart, either order (torch's RNG)."""
        index = batch["index"].cpu()
        n, frames = len(index), self.params.frames
        gap = torch.randint(1, self.params.max_gap + 1, (n,))
        start = (torch.rand(n) * (frames - gap)).long()
        backwards = torch.rand(n) < 0.5
        reference = torch.where(backwards, start + gap, start)
        target = torch.where(backwards, start, start + gap)
        videos = self.train_videos.frames[index]
        rows = torch.arange(n)
        return {"reference": videos[rows, reference].to(batch["index"].device),
                "target": videos[rows, target].to(batch["index"].device)}

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        n = batch["reference"].shape[0]
        grey, ab = self.lab(torch.cat([batch["reference"], batch["target"]]))
        features = module(grey)
        centroids = self.core(module).centroids
        classes = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), centroids).argmin(dim=1).view(2 * n, *self.grid)
        loss, accuracy = colour_pointer_loss(features[n:], features[:n], classes[:n], classes[n:],
                                             len(centroids), self.params.temperature)
        return {"loss": loss, "colour_accuracy": accuracy}

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        return batch["reference"].shape[0], 0

    # -- evaluation --------------------------------------------------------------------------------
    def has_evaluation(self) -> bool:
        return True

    @torch.no_grad()
    def track(self, module: nn.Module, device: torch.device, keep: int) -> dict[str, float]:
        p, inner = self.params, self.core(module)
        was = inner.training
        inner.eval()
        try:
            curves, self.kept = tracking_curves(self.eval_videos, lambda f: inner(self.lab(f.to(device))[0]).cpu(),
                                                p.temperature, p.pixel_temperature, p.propagation, keep)
        finally:
            inner.train(was)
        out: dict[str, float] = {}
        for name, curve in curves.items():  # frame 0 is given, so it is left out of the means
            out[f"tracking_iou_{name}"] = round(sum(curve[1:]) / (len(curve) - 1), 4)
            out[f"tracking_iou_{name}_last_frame"] = curve[-1]
        self.last_diagnostics = {"tracking_iou_curve": curves}
        return out

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        return {**self.track(module, accelerator.device, self.params.figure_videos), **self.before}

    def load_export(self, directory: Path) -> VideoColorizationModule:
        """The module `export` wrote: the backbone folder plus the pointer head and colour clusters."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / HEAD_FILE).is_file():
            raise MmsslError(f"{str(directory)!r} holds no video colourisation model (no {HEAD_FILE}): export one "
                             "with objective 'video_colorization'")
        head = load_file(str(directory / HEAD_FILE))
        module = VideoColorizationModule(load_backbone(directory), head["embed.weight"].shape[0], head["centroids"])
        module.embed.load_state_dict({"weight": head["embed.weight"], "bias": head["embed.bias"]})
        return module

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        """Tracking on the recipe's eval videos (``mmssl eval DIR``, e.g. with ``objective.propagation=first``)."""
        self.module = self.load_export(directory)
        self.mean, self.std = self.module.backbone.mean, self.module.backbone.std
        self.eval_videos = self.held_out_videos()
        self.grid = tuple(json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))["feature_grid"])
        out = self.track(self.module, torch.device("cpu"), keep=0)
        return {**out, **self.last_diagnostics}

    def save_artifacts(self, directory: Path) -> None:
        (directory / FLOOR_FILE).write_text(json.dumps(self.before), encoding="utf-8")

    # -- export ------------------------------------------------------------------------------------
    def export(self, module: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        inner, p = self.core(module), self.params
        directory = Path(directory)
        inner.backbone.save(directory, image_size=p.image_size, trained_on=data_description(self.recipe.data))
        save_file({"embed.weight": inner.embed.weight.detach().cpu().contiguous(),
                   "embed.bias": inner.embed.bias.detach().cpu().contiguous(),
                   "centroids": inner.centroids.detach().cpu().contiguous()}, str(directory / HEAD_FILE))
        config = {"method": "video_colorization", "temperature": p.temperature, "embed_dim": p.embed_dim,
                  "image_size": p.image_size, "feature_grid": list(self.grid), "propagation": p.propagation,
                  "input": "grey frames: Lab L / 100 repeated to 3 channels, normalised with the backbone's mean/std",
                  "features": "normalize(conv1x1(backbone.forward_features(grey)), dim=1)", **self.before}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        if self.kept:
            tracking_figure(self.kept, directory / FIGURE_FILE)

    def describe(self) -> dict[str, Any]:
        backbone: Backbone = self.module.backbone
        return {
            "num_parameters": sum(t.numel() for t in self.module.parameters()),
            "architecture": backbone.arch,
            "backbone_library": backbone.library,
            "library_name": backbone.library,
            "feature_grid": list(self.grid),
            "image_size": self.params.image_size,
            "train_videos": len(self.train_videos),
            "eval_videos": len(self.eval_videos),
            "frames_per_video": self.params.frames,
        }
