"""Short videos of the built-in world (`mmssl.data.world`): 1 to `max_objects` coloured shapes moving at constant
velocity and bouncing off the borders, drawn in a fixed depth order (a later object hides an earlier one where
they overlap), optionally behind a static grey bar, with a ground-truth instance label map per frame.

Each video is a function of (seed, split, index) alone. The label map is drawn with the very polygons the frame
is drawn with, so its pixels match the frame's: label k > 0 where object k is visible, 0 for the background and
the bar. The objects of a video may share a colour (by chance, or copied with probability ``same_colour``): then
only their shape and motion tell them apart, and so they do in grey wherever two colours have about the same
lightness (blue, purple and brown; orange and pink), which is what a colourising tracker has to learn and
raw-pixel matching cannot.

`video_folder` reads videos stored as folders of frames (one subfolder per video, frames in name order) and
refuses a video whose frames differ in size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmssl.data.world import COLOURS, SHAPES, draw_shape
from mmssl.errors import DataError

OCCLUDER_GREY = (150, 150, 150)
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class VideoWorld:
    """How the world's videos look."""

    num_videos: int = 400
    frames: int = 8
    size: int = 32  # frame side in pixels
    max_objects: int = 3
    num_colours: int = 6  # the first colours of `world.COLOURS`
    num_shapes: int = 4  # the first shapes of `world.SHAPES`
    diameter: tuple[float, float] = (0.25, 0.45)  # of the side
    speed: tuple[float, float] = (0.03, 0.08)  # of the side per frame
    # probability that an object copies the colour of one drawn before it (otherwise its colour is drawn at
    # random, so it may repeat one by chance too)
    same_colour: float = 0.25
    occluder: float = 0.0  # probability of a static grey bar in front of everything
    seed: int = 0


@dataclass
class Videos:
    """``frames`` uint8 ``[N, T, 3, S, S]``; ``labels`` uint8 ``[N, T, S, S]`` (0 background, k object k);
    ``objects`` ``[N]`` objects per video; ``colours`` the index in `world.COLOURS` of each video's objects."""

    frames: torch.Tensor
    labels: torch.Tensor
    objects: torch.Tensor
    colours: list[list[int]]

    def __len__(self) -> int:
        return self.frames.shape[0]


def _video(cfg: VideoWorld, rng: random.Random) -> tuple[np.ndarray, np.ndarray, list[int]]:
    size, count = cfg.size, rng.randint(1, cfg.max_objects)
    objects = []
    for k in range(count):
        if k and rng.random() < cfg.same_colour:
            colour = objects[rng.randrange(k)]["colour"]
        else:
            colour = rng.randrange(cfg.num_colours)
        r = rng.uniform(*cfg.diameter) * size / 2
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*cfg.speed) * size
        objects.append({"colour": colour, "shape": SHAPES[rng.randrange(cfg.num_shapes)], "r": r,
                        "x": rng.uniform(r, size - r), "y": rng.uniform(r, size - r),
                        "vx": speed * np.cos(angle), "vy": speed * np.sin(angle)})
    bar = None
    if rng.random() < cfg.occluder:  # a vertical bar, a fifth of the side wide, somewhere in the middle half
        left = rng.uniform(0.25, 0.55) * size
        bar = [left, 0, left + 0.2 * size, size]
    frames = np.empty((cfg.frames, size, size, 3), np.uint8)
    labels = np.empty((cfg.frames, size, size), np.uint8)
    for t in range(cfg.frames):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        label = Image.new("L", (size, size), 0)
        draw, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
        for k, o in enumerate(objects, start=1):
            draw_shape(draw, o["shape"], o["x"], o["y"], o["r"], COLOURS[o["colour"]][1])
            draw_shape(draw_label, o["shape"], o["x"], o["y"], o["r"], k)
        if bar is not None:
            draw.rectangle(bar, fill=OCCLUDER_GREY)
            draw_label.rectangle(bar, fill=0)
        frames[t], labels[t] = np.asarray(image), np.asarray(label)
        for o in objects:  # constant velocity, reflected at the borders
            for pos, vel in (("x", "vx"), ("y", "vy")):
                o[pos] += o[vel]
                if o[pos] < o["r"] or o[pos] > size - o["r"]:
                    o[vel] = -o[vel]
                    o[pos] = 2 * (o["r"] if o[pos] < o["r"] else size - o["r"]) - o[pos]
    return frames, labels, [o["colour"] for o in objects]


def world_videos(cfg: VideoWorld, split: str = "train") -> Videos:
    """The split's videos ('eval': an independent stream, a fifth as many, at least one)."""
    if not 1 <= cfg.num_colours <= len(COLOURS) or not 1 <= cfg.num_shapes <= len(SHAPES):
        raise ValueError(f"num_colours must lie in [1, {len(COLOURS)}] and num_shapes in [1, {len(SHAPES)}]")
    count = cfg.num_videos if split == "train" else max(1, cfg.num_videos // 5)
    frames, labels, objects, colours = [], [], [], []
    for i in range(count):
        f, lab, c = _video(cfg, random.Random(f"{cfg.seed}/{split}/video/{i}"))
        frames.append(f)
        labels.append(lab)
        objects.append(len(c))
        colours.append(c)
    return Videos(torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).contiguous(),
                  torch.from_numpy(np.stack(labels)), torch.tensor(objects), colours)


def stack_frames(video: str, frames: list[np.ndarray], names: list[str] | None = None) -> np.ndarray:
    """``[T, H, W, 3]`` from one video's frames, or a DataError naming the video and the sizes when they differ."""
    sizes = [tuple(f.shape[:2]) for f in frames]
    if len(set(sizes)) > 1:
        names = names or [str(i) for i in range(len(frames))]
        seen: dict[tuple, list[str]] = {}
        for name, s in zip(names, sizes):
            seen.setdefault(s, []).append(name)
        listed = "; ".join(f"{w}x{h}: {', '.join(n[:3])}{' ...' if len(n) > 3 else ''}"
                           for (h, w), n in seen.items())
        raise DataError(f"video {video!r} has frames of different sizes ({listed}); every frame of a video must have "
                        "one size: resize them to one size first")
    return np.stack(frames)


def video_folder(root: str | Path) -> dict[str, np.ndarray]:
    """Videos stored as ``root/<video>/<frame>.png`` (frames in name order) -> ``{video: [T, H, W, 3] uint8}``."""
    path = Path(root)
    videos = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    if not videos:
        raise DataError(f"{str(root)!r} holds no video folders: put each video's frames in its own subfolder "
                        f"({', '.join(FRAME_SUFFIXES)})")
    out = {}
    for folder in videos:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise DataError(f"video {str(folder)!r} has no frames ({', '.join(FRAME_SUFFIXES)})")
        frames = []
        for file in files:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        out[folder.name] = stack_frames(str(folder), frames, [f.name for f in files])
    return out
