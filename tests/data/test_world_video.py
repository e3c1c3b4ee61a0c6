"""The world's videos (`mmssl.data.world_video`): seeded, their label maps match the drawn pixels, the shapes move,
and a folder video whose frames differ in size is refused with one clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmssl.data.world import COLOURS
from mmssl.data.world_video import OCCLUDER_GREY, VideoWorld, stack_frames, video_folder, world_videos
from mmssl.errors import DataError

WORLD = VideoWorld(num_videos=20, frames=6, size=32, max_objects=3, same_colour=0.5)


def test_videos_are_seeded_and_the_eval_split_is_held_out():
    a, b = world_videos(WORLD), world_videos(WORLD)
    assert a.frames.shape == (20, 6, 3, 32, 32) and a.labels.shape == (20, 6, 32, 32) and a.frames.dtype == torch.uint8
    assert torch.equal(a.frames, b.frames) and torch.equal(a.labels, b.labels) and a.colours == b.colours
    held_out = world_videos(WORLD, "eval")
    assert len(held_out) == 4 and not torch.equal(held_out.frames, a.frames[:4])
    other = world_videos(VideoWorld(**{**WORLD.__dict__, "seed": 1}))
    assert not torch.equal(other.frames, a.frames)
    assert set(a.objects.tolist()) == {1, 2, 3}
    assert any(len(set(c)) < len(c) for c in a.colours)  # some videos repeat a colour (same_colour)


@pytest.mark.parametrize("occluder", [0.0, 1.0])
def test_label_maps_match_the_pixels_drawn(occluder):
    videos = world_videos(VideoWorld(**{**WORLD.__dict__, "occluder": occluder}))
    for i in range(len(videos)):
        frames, labels = videos.frames[i].permute(0, 2, 3, 1), videos.labels[i]
        assert int(labels.max()) <= int(videos.objects[i])
        for k, colour in enumerate(videos.colours[i], start=1):
            assert (frames[labels == k] == torch.tensor(COLOURS[colour][1], dtype=torch.uint8)).all()
        background = frames[labels == 0]
        white = (background == 255).all(dim=1)
        grey = (background == torch.tensor(OCCLUDER_GREY, dtype=torch.uint8)).all(dim=1)
        assert (white | grey).all() and (grey.any() if occluder else not grey.any())


def test_objects_keep_moving_from_frame_to_frame():
    videos = world_videos(VideoWorld(**{**WORLD.__dict__, "max_objects": 1}))
    moved = 0
    for i in range(len(videos)):
        ys, xs = [], []
        for t in range(WORLD.frames):
            y, x = torch.nonzero(videos.labels[i, t] == 1, as_tuple=True)
            ys.append(y.float().mean())
            xs.append(x.float().mean())
        step = torch.stack([torch.tensor(xs).diff(), torch.tensor(ys).diff()], dim=1).norm(dim=1)
        assert (step > 0.3).all()  # never still: at least 0.03 of 32 px per frame
        moved += int(step.mean() > 0.9)
    assert moved > len(videos) // 2


def test_a_video_whose_frames_differ_in_size_is_refused_naming_it(tmp_path):
    good, bad = tmp_path / "videos" / "clip_a", tmp_path / "videos" / "clip_b"
    good.mkdir(parents=True)
    bad.mkdir()
    for t in range(3):
        Image.new("RGB", (16, 16), (255, 0, 0)).save(good / f"{t:03d}.png")
        Image.new("RGB", (16, 16) if t < 2 else (20, 12), (0, 0, 255)).save(bad / f"{t:03d}.png")
    with pytest.raises(DataError, match=r"video '.*clip_b' has frames of different sizes \(16x16: 000\.png, 001\.png; "
                                        r"20x12: 002\.png\).*resize them"):
        video_folder(tmp_path / "videos")
    (bad / "002.png").unlink()
    videos = video_folder(tmp_path / "videos")
    assert sorted(videos) == ["clip_a", "clip_b"] and videos["clip_b"].shape == (2, 16, 16, 3)
    assert np.array_equal(stack_frames("x", [np.zeros((4, 4, 3))] * 2), np.zeros((2, 4, 4, 3)))
