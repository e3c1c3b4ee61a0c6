"""End to end through the real CLI: train CLIP on files with bad images, load the output in open_clip,
`mmssl eval` it; and a two-process run whose negatives are gathered across processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import PYTHON

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 24}}


def recipe(tmp_path: Path, data: dict, **train) -> Path:
    raw = {
        "name": "clip-cli",
        "output_dir": str(tmp_path / "unused"),
        "seed": 0,
        "data": data,
        "model": {"arch": "mmssl-vit-tiny", "config": TINY_CLIP},
        "objective": {"name": "clip", "views": {"random_resized_crop": True, "crop_scale": [0.7, 1.0]}},
        "train": {"batch_size": 16, "learning_rate": 2e-3, "max_steps": 4, "log_every": 2, "progress": False,
                  "cpu": True, **train},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture
def image_files(tmp_path: Path) -> Path:
    """World images as PNG files in a jsonl table, plus three broken ones."""
    from mmssl.data.world import world_columns
    from mmssl.recipes import WorldConfig

    folder = tmp_path / "images"
    folder.mkdir()
    cols = world_columns(WorldConfig(num_scenes=60, num_colours=2, num_shapes=2), "image_text")
    names = ["red circle", "red square", "green circle", "green square"]
    rows = []
    for i, (image, caps, label) in enumerate(zip(cols["image"], cols["captions"], cols["label"])):
        image.convert("P", palette=1).save(folder / f"{i}.png") if i % 7 == 0 else image.save(folder / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "captions": caps, "label": names[label]})
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.png").write_bytes((folder / "0.png").read_bytes()[:40])
    rows += [{"image": "images/empty.png", "captions": ["nothing"], "label": "red circle"},
             {"image": "images/cut.png", "captions": ["cut"], "label": "red circle"},
             {"image": "images/gone.png", "captions": ["gone"], "label": "red circle"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path / "pairs.jsonl"


@pytest.mark.slow
def test_cli_train_export_and_eval(tmp_path: Path, image_files: Path, cli_env):
    import open_clip

    out = tmp_path / "run"
    path = recipe(tmp_path, {"source": "files", "path": str(image_files), "eval_fraction": 0.25})
    run([PYTHON, "-m", "mmssl", "train", str(path), f"output_dir={out}"], cli_env)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == 3 and metrics["skipped_reasons"] == {"empty": 1, "unreadable": 1, "missing file": 1}
    assert metrics["train_images"] + metrics["eval_images"] == 60
    assert metrics["num_classes"] == 4
    for key in ("zero_shot_top1", "image_to_text_recall@1", "image_to_text_recall@10", "text_to_image_recall@5"):
        assert 0.0 <= metrics["eval"][key] <= 1.0, key
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["skipped_images"] == 3

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    with torch.no_grad():
        assert model.encode_text(tokenizer(["a red circle"])).shape == (1, 32)

    evaluated = json.loads(run([PYTHON, "-m", "mmssl", "eval", str(out)], cli_env).stdout)
    for key in ("zero_shot_top1", "image_to_text_recall@1", "text_to_image_recall@10"):
        assert evaluated[key] == pytest.approx(metrics["eval"][key], abs=1e-4), key
    assert evaluated["logit_scale"] == pytest.approx(metrics["eval"]["logit_scale"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_gather_negatives(tmp_path: Path, cli_env):
    out = tmp_path / "run2"
    data = {"source": "world", "world": {"num_scenes": 80, "num_colours": 2, "num_shapes": 2}}
    path = recipe(tmp_path, data, max_steps=3, batch_size=8)
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "mmssl", "train", str(path), f"output_dir={out}"], cli_env, timeout=300)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2, proc.stdout[-2000:]
    assert metrics["steps"] == 3 and metrics["examples_seen_per_process"] == 24
    assert (out / "open_clip_model.safetensors").is_file()
