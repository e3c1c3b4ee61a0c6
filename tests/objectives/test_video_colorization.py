"""Tracking emerges by colourising videos (Vondrick et al. 2018): the pointer and its loss against naive loops,
mask propagation with an oracle feature, the copy baseline, a tiny run through the real trainer and a kill/resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmssl.data.world_video import VideoWorld, world_videos
from mmssl.errors import RecipeError
from mmssl.eval.tracking import mask_iou, track, tracking_curves
from mmssl.losses.colour_pointer import colour_pointer_loss, point, pointer_weights, propagate
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective


def naive_weights(q, r, temperature, metric):
    """Attention written position by position: [Nq, Nr] for one query map [D, Nq] and one reference map [D, Nr]."""
    out = torch.zeros(q.shape[1], r.shape[1], dtype=torch.float64)
    for i in range(q.shape[1]):
        sims = []
        for j in range(r.shape[1]):
            a, b = q[:, i].double(), r[:, j].double()
            sims.append(float(a @ b) if metric == "dot" else -float(((a - b) ** 2).sum()))
        top = max(sims)
        exps = [math.exp((s - top) / temperature) for s in sims]
        out[i] = torch.tensor([e / sum(exps) for e in exps])
    return out


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_the_pointer_copies_reference_values_as_a_naive_loop_does(metric):
    g = torch.Generator().manual_seed(0)
    query, reference, values = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g), \
        torch.randn(2, 3, 3, 4, generator=g)
    weights = pointer_weights(query, reference, 0.7, metric)
    copied = point(weights, values)
    for b in range(2):
        expected = naive_weights(query[b].flatten(1), reference[b].flatten(1), 0.7, metric)
        assert torch.allclose(weights[b].double(), expected, atol=1e-5)
        for i in range(12):  # the copy at position i: sum_j A_ij v_j
            want = sum(float(expected[i, j]) * values[b].flatten(1)[:, j] for j in range(12))
            assert torch.allclose(copied[b, :, i], want.float(), atol=1e-5)


def test_the_colour_loss_is_the_cross_entropy_of_the_copied_class_distribution():
    g = torch.Generator().manual_seed(1)
    target, reference = torch.randn(2, 4, 2, 3, generator=g), torch.randn(2, 4, 2, 3, generator=g)
    ref_classes = torch.randint(0, 5, (2, 2, 3), generator=g)
    target_classes = torch.randint(0, 5, (2, 2, 3), generator=g)
    loss, accuracy = colour_pointer_loss(target, reference, ref_classes, target_classes, 5, 0.5)
    total, hits = 0.0, 0
    for b in range(2):
        weights = naive_weights(target[b].flatten(1), reference[b].flatten(1), 0.5, "dot")
        for i in range(6):
            p = [sum(float(weights[i, j]) for j in range(6) if int(ref_classes[b].flatten()[j]) == k) for k in range(5)]
            total -= math.log(max(p[int(target_classes[b].flatten()[i])], 1e-8))
            hits += int(max(range(5), key=lambda k: p[k]) == int(target_classes[b].flatten()[i]))
    assert float(loss) == pytest.approx(total / 12, rel=1e-5) and float(accuracy) == pytest.approx(hits / 12)


@pytest.mark.parametrize("reference", ["first", "previous"])
def test_propagation_points_at_frame_zero_or_recursively_at_the_previous_prediction(reference):
    g = torch.Generator().manual_seed(2)
    features, first = torch.randn(4, 3, 2, 2, generator=g), torch.rand(2, 2, 2, generator=g)
    got = propagate(features, first, 0.3, reference)
    labels = [first.flatten(1).double()]
    for t in range(1, 4):
        src = 0 if reference == "first" else t - 1
        w = naive_weights(features[t].flatten(1), features[src].flatten(1), 0.3, "dot")
        labels.append(labels[src] @ w.t())
    assert torch.allclose(got.flatten(2).double(), torch.stack(labels), atol=1e-5)


def test_an_oracle_feature_tracks_perfectly_and_copying_the_first_mask_does_not():
    videos = world_videos(VideoWorld(num_videos=30, frames=8, size=32, max_objects=3, same_colour=0.0), "eval")
    copy_last = []
    for i in range(len(videos)):
        labels, objects = videos.labels[i], int(videos.objects[i])
        # the oracle: each pixel's feature is the one-hot of its true instance, at full resolution
        oracle = torch.nn.functional.one_hot(labels.long(), objects + 1).permute(0, 3, 1, 2).float()
        for reference in ("first", "previous"):
            assert torch.equal(track(oracle, labels, objects, 0.01, reference), labels.long())
        assert torch.equal(mask_iou(labels, labels, objects), torch.ones(8))
        copy_last.append(float(mask_iou(labels[:1].expand_as(labels), labels, objects)[-1]))
    assert sum(copy_last) / len(copy_last) < 0.5  # objects move: the first mask no longer covers them
    curves, kept = tracking_curves(videos, lambda f: torch.zeros(8, 1, 16, 16), 0.1, 1e-3, keep=1)
    assert curves["copy"][0] == 1.0 and curves["copy"][-1] < 0.5 and len(kept) == 1
    assert curves["pixels"][-1] > curves["copy"][-1]  # colours (lightness) point at the right objects


def tiny_recipe(output_dir, **train) -> dict:
    return {
        "name": "test-video-colorization", "output_dir": str(output_dir), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 60, "num_colours": 6, "num_shapes": 4}},
        "model": {"arch": "resnet18", "config": {"channels": [8, 8, 16, 16], "small_stem": True, "output_stride": 8}},
        "objective": {"name": "video_colorization", "image_size": 16, "frames": 5, "max_gap": 2, "colours": 8,
                      "embed_dim": 16, "eval_videos": 6, "figure_videos": 1},
        "train": {"batch_size": 16, "learning_rate": 3e-3, "max_steps": 24, "log_every": 4, "progress": False,
                  "cpu": True, **train},
    }


def test_recipes_it_cannot_train_are_refused_clearly(tmp_path):
    raw = tiny_recipe(tmp_path)
    raw["data"] = {"source": "files", "path": str(tmp_path)}
    with pytest.raises(RecipeError, match="built-in world's videos"):
        get_objective("video_colorization")(parse_recipe(raw)).setup()
    raw = tiny_recipe(tmp_path)
    raw["objective"]["max_gap"] = 5
    with pytest.raises(RecipeError, match=r"max_gap=5 must be smaller than objective\.frames=5"):
        get_objective("video_colorization")(parse_recipe(raw)).setup()


@pytest.mark.slow
def test_trains_tracks_and_exports(tmp_path):
    from safetensors.torch import load_file

    from mmssl.evaluate import evaluate_output
    from mmssl.models.vision import load_backbone
    from mmssl.train.loop import train

    out = tmp_path / "run"
    metrics = train(parse_recipe(tiny_recipe(out)))
    logged = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]
    losses = [e["loss"] for e in logged]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
    result = metrics["eval"]
    for name in ("learned", "pixels", "copy"):
        assert 0 <= result[f"tracking_iou_{name}"] <= 1
    assert 0 <= result["random_init_tracking_iou_learned"] <= 1
    curves = metrics["diagnostics"]["tracking_iou_curve"]
    assert len(curves["learned"]) == 5 and curves["copy"][0] == 1.0
    assert (out / "tracking.png").is_file()
    # the export: a backbone folder whose forward_features, with the saved 1x1 head, gives the pointer's features
    backbone, head = load_backbone(out), load_file(str(out / "pointer_head.safetensors"))
    config = json.loads((out / "video_colorization.json").read_text())
    assert head["centroids"].shape == (8, 2) and config["feature_grid"] == [8, 8]
    grey = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        mapped = torch.nn.functional.conv2d(backbone.eval().model.forward_features(grey), head["embed.weight"],
                                            head["embed.bias"])
    assert mapped.shape == (2, 16, 8, 8)
    # `mmssl eval DIR` tracks again from the export: the same numbers, and other settings by override
    again = evaluate_output(out)
    assert again["tracking_iou_learned"] == result["tracking_iou_learned"]
    first = evaluate_output(out, ["objective.propagation=first"])
    assert first["tracking_iou_curve"]["copy"] == curves["copy"] and 0 <= first["tracking_iou_learned"] <= 1
    from mmssl.hub.cards import render_card

    card = render_card(out, "someone/tracker")  # what `mmssl push` uploads: the tracking table, not a kNN one
    assert f"| this model | {result['tracking_iou_learned']:.3f}" in card and "pointer_head.safetensors" in card
    from mmssl.report.page import write_report

    page = write_report([out], tmp_path / "report").read_text()  # `mmssl report`: the IoU curves and the masks
    report_files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"tracking_iou.png", "run_tracking.png"} <= report_files and page.count("data:image/png;base64,") >= 4
    assert (tmp_path / "report" / "run_tracking.png").read_bytes() == (out / "tracking.png").read_bytes()


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    from clirun import straight_and_resumed_here

    raw = tiny_recipe(tmp_path / "unused", max_steps=8, save_every=4, keep_checkpoints=10)
    raw["data"]["world"]["num_scenes"] = 20
    raw["objective"].update(eval_before=False, eval_videos=1, figure_videos=0, kmeans_pixels=2000)
    a, b, stopped_at = straight_and_resumed_here(raw, tmp_path, 4, 8)
    assert a.keys() == b.keys() and any(k.endswith("centroids") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
