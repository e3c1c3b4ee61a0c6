"""Mask tracking by pointing (Vondrick et al. 2018), with no fine-tuning: the first frame's instance masks are
propagated through a video by the colourisation pointer (`mmssl.losses.colour_pointer.propagate`) over some
features of the frames, and compared with the true masks frame by frame (intersection over union, averaged over
the objects of the first frame; an object absent from both the truth and the prediction of a frame scores 1).

Baselines: copying the first frame's masks to every frame, and pointing with raw pixels (each frame's lightness at
the features' grid, matched by squared distance)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from mmssl.data.lab import rgb_to_lab
from mmssl.losses.colour_pointer import Metric, propagate

PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def mask_iou(predicted: torch.Tensor, truth: torch.Tensor, objects: int) -> torch.Tensor:
    """``[T]``: per frame, the IoU of each object's predicted and true masks (label maps ``[T, H, W]``, objects
    1..`objects`), averaged over the objects."""
    scores = []
    for k in range(1, objects + 1):
        p, g = predicted == k, truth == k
        union = (p | g).flatten(1).sum(1).float()
        inter = (p & g).flatten(1).sum(1).float()
        scores.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
    return torch.stack(scores).mean(0)


def track(features: torch.Tensor, labels: torch.Tensor, objects: int, temperature: float,
          reference: Literal["first", "previous"] = "previous", metric: Metric = "dot") -> torch.Tensor:
    """Label maps ``[T, H, W]`` predicted from the first frame's labels ``[T, H, W]`` (only frame 0 is read) by
    pointing with `features` ``[T, D, h, w]``: the first frame's one-hot labels are averaged onto the features'
    grid, propagated, resized back to the frame (bilinear) and the most likely label taken."""
    size = labels.shape[-2:]
    onehot = F.one_hot(labels[0].long(), objects + 1).permute(2, 0, 1).float()
    first = F.adaptive_avg_pool2d(onehot[None], features.shape[-2:])[0]
    soft = propagate(features.float(), first, temperature, reference, metric)
    return F.interpolate(soft, size=size, mode="bilinear", align_corners=False).argmax(dim=1)


def lightness(frames: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Raw-pixel features: the lightness (L / 100) of uint8 frames ``[T, 3, H, W]`` -> ``[T, 1, h, w]`` (averaged
    onto `grid`)."""
    grey = rgb_to_lab(frames.float() / 255)[:, :1] / 100
    return F.adaptive_avg_pool2d(grey, grid) if grid is not None else grey


def tracking_curves(videos, featurise: Callable[[torch.Tensor], torch.Tensor], temperature: float,
                    pixel_temperature: float, reference: Literal["first", "previous"] = "previous",
                    keep: int = 0) -> tuple[dict[str, list[float]], list[dict[str, torch.Tensor]]]:
    """Mean IoU per frame over `videos` (`mmssl.data.world_video.Videos`) of the learned pointer (`featurise`:
    uint8 frames ``[T, 3, H, W]`` -> ``[T, D, h, w]``), raw-pixel pointing and the first-mask copy
    -> ({"learned": [T], "pixels": [T], "copy": [T]}, the predictions of the first `keep` videos)."""
    totals = {"learned": 0.0, "pixels": 0.0, "copy": 0.0}
    kept = []
    for i in range(len(videos)):
        frames, labels, objects = videos.frames[i], videos.labels[i], int(videos.objects[i])
        features = featurise(frames)
        predicted = {
            "learned": track(features, labels, objects, temperature, reference),
            "pixels": track(lightness(frames, features.shape[-2:]), labels, objects, pixel_temperature, reference,
                            metric="l2"),
            "copy": labels[:1].expand_as(labels),
        }
        for name, p in predicted.items():
            totals[name] = totals[name] + mask_iou(p, labels, objects)
        if i < keep:
            kept.append({"frames": frames, "truth": labels, **predicted})
    return {name: [round(float(v) / len(videos), 4) for v in total] for name, total in totals.items()}, kept


def overlay(frame: torch.Tensor, labels: torch.Tensor, alpha: float = 0.7) -> Image.Image:
    """An RGB frame ``[3, H, W]`` uint8, turned grey, with its label map ``[H, W]`` painted over it in the palette's
    colours (background left grey)."""
    grey = (frame.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    rgb = grey[..., None].expand(-1, -1, 3)
    colours = torch.tensor(PALETTE, dtype=torch.float)[labels.long() % len(PALETTE)]
    mixed = torch.where((labels > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    return Image.fromarray(mixed.round().clamp(0, 255).byte().numpy())


def tracking_figure(kept: list[dict[str, torch.Tensor]], path: str | Path, scale: int = 3) -> Path:
    """A PNG grid: per video, rows frame / truth / copy / raw pixels / learned (masks painted over the grey
    frame, one colour per object), one column per frame."""
    rows = ["frames", "truth", "copy", "pixels", "learned"]
    t, _, h, w = kept[0]["frames"].shape
    label_w, gap = 52, 4
    sheet = Image.new("RGB", (label_w + t * w * scale, len(kept) * (len(rows) * h * scale + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for video in kept:
        for row in rows:
            draw.text((2, y + h * scale // 2 - 5), row, fill=(0, 0, 0))
            for f in range(t):
                frame = video["frames"][f]
                cell = (Image.fromarray(frame.permute(1, 2, 0).numpy()) if row == "frames"
                        else overlay(frame, video[row][f]))
                sheet.paste(cell.resize((w * scale, h * scale), Image.NEAREST), (label_w + f * w * scale, y))
            y += h * scale
        y += gap
    path = Path(path)
    sheet.save(path)
    return path
