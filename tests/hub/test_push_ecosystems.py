"""`mmssl.hub.push` per ecosystem: sentence-transformers, open_clip and image-encoder outputs pushed to the local Hub
and loaded back by repo id with their own libraries."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from helpers import PYTHON, ROOT, TINY_BERT

from mmssl.recipes import parse_recipe
from mmssl.train.loop import train


def env_for(hub, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_secret_token", "HF_HOME": str(tmp_path / "hf-home"),
                "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return env


def push(hub, tmp_path, out, repo_id) -> dict:
    done = subprocess.run([PYTHON, "-m", "mmssl", "push", str(out), "--repo-id", repo_id], env=env_for(hub, tmp_path),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def run_python(code: str, env: dict) -> str:
    done = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def same(remote: list, local: list) -> bool:
    """Equal features up to float rounding (this process and a fresh one may use different thread counts)."""
    import torch

    return torch.allclose(torch.tensor(remote), torch.tensor(local), rtol=1e-5, atol=1e-6)


def run_here(code: str) -> str:
    """The last line `code` prints, run in this process: for loading the local folder, the reference the pushed
    copy (loaded by repo id in a fresh interpreter, through the real Hub client) must equal."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})  # noqa: S102 - the test's own code
    return out.getvalue().strip().splitlines()[-1]


@pytest.mark.slow
def test_sentence_transformer_round_trip(hub, tmp_path):
    out = tmp_path / "st"
    train(parse_recipe({
        "output_dir": str(out), "seed": 0, "data": {"source": "world", "world": {"num_scenes": 100}},
        "tokenizer": {"vocab_size": 300}, "model": {"arch": "bert", "config": dict(TINY_BERT)},
        "objective": {"name": "simcse", "max_length": 32, "eval_before": False},
        "train": {"batch_size": 8, "max_steps": 2, "progress": False, "cpu": True},
    }))
    push(hub, tmp_path, out, "org/st-world")
    files = hub.files("org/st-world")
    assert "modules.json" in files and "model.safetensors" in files
    card = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert card["library_name"] == "sentence-transformers" and card["pipeline_tag"] == "sentence-similarity"
    code = ("import json; from sentence_transformers import SentenceTransformer; "
            "m = SentenceTransformer({!r}); print(json.dumps(m.encode(['a red circle above a blue square']).tolist()))")
    env = env_for(hub, tmp_path)
    remote = json.loads(run_python(code.format("org/st-world"), env))
    local = json.loads(run_here(code.format(str(out))))
    assert same(remote, local)


@pytest.mark.slow
def test_open_clip_round_trip(hub, tmp_path):
    out = tmp_path / "clip"
    train(parse_recipe({
        "output_dir": str(out), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 64, "image_size": 32, "num_colours": 2, "num_shapes": 2}},
        "model": {"arch": "mmssl-vit-tiny", "config": {
            "embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16},
            "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 24}}},
        "objective": {"name": "clip"},
        "train": {"batch_size": 16, "max_steps": 2, "progress": False, "cpu": True},
    }))
    push(hub, tmp_path, out, "org/clip-world")
    files = hub.files("org/clip-world")
    assert "open_clip_config.json" in files
    card = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert card["library_name"] == "open_clip"
    code = ("import json, torch, open_clip; m, _, _ = open_clip.create_model_and_transforms({!r}); "
            "t = open_clip.get_tokenizer({!r})(['a red circle']); m.eval(); "
            "print(json.dumps(m.encode_text(t).tolist()))")
    env = env_for(hub, tmp_path)
    remote = json.loads(run_python(code.format("hf-hub:org/clip-world", "hf-hub:org/clip-world"), env))
    local = json.loads(run_here(code.format(f"local-dir:{out}", f"local-dir:{out}")))
    assert same(remote, local)


@pytest.mark.slow
@pytest.mark.parametrize("backbone, loader", [
    ({"arch": "resnet18", "config": {"channels": [8, 8, 16, 16]}},
     "import timm; m = timm.create_model({ref!r}, pretrained=True, num_classes=0).eval(); f = m(x)"),
    ({"arch": "vit", "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 64, "image_size": 16, "patch_size": 8}},
     "from transformers import AutoModel; m = AutoModel.from_pretrained({ref!r}).eval(); f = m(pixel_values=x).pooler_output"),
])
def test_image_encoder_round_trip(hub, tmp_path, backbone, loader):
    """An image SSL output, pushed, loads by repo id in its own library (timm / transformers) with the exact
    features of the local folder; the card's own snippet runs."""
    import re

    out = tmp_path / "img"
    train(parse_recipe({
        "output_dir": str(out), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 80, "image_size": 16, "pair_fraction": 0.0}},
        "model": backbone,
        "objective": {"name": "simclr", "image_size": 16, "projection_dim": 8, "hidden_dim": 16, "eval_before": False},
        "train": {"batch_size": 8, "max_steps": 2, "progress": False, "cpu": True},
    }))
    assert not (out / ".mmssl-run.lock").exists()  # the finished run let go of its folder and left no lock file
    library = "timm" if backbone["arch"] == "resnet18" else "transformers"
    repo = f"org/img-{library}"
    push(hub, tmp_path, out, repo)
    files = hub.files(repo)
    card_text = files["README.md"].decode()
    card = yaml.safe_load(card_text.split("---")[1])
    assert card["library_name"] == library and card["pipeline_tag"] == "image-feature-extraction"
    assert {r["type"] for r in card["model-index"][0]["results"][0]["metrics"]} == {"knn_top1", "linear_probe_top1"}
    if library == "timm":  # timm's config describes what was trained (16 px, its normalisation), not ImageNet's
        cfg = json.loads(files["config.json"])["pretrained_cfg"]
        assert cfg["input_size"] == [3, 16, 16] and not {"tag", "license", "origin_url", "hf_hub_id"} & set(cfg)
    code = ("import json, torch; torch.manual_seed(0); x = torch.rand(2, 3, 16, 16); "
            + loader + "; print(json.dumps(f.tolist()))")
    ref = ("hf-hub:" + repo) if library == "timm" else repo
    local_ref = f"local-dir:{out}" if library == "timm" else str(out)
    env = env_for(hub, tmp_path)
    remote = json.loads(run_python(code.format(ref=ref), env))
    local = json.loads(run_here(code.format(ref=local_ref)))
    assert same(remote, local)
    snippet = re.search(r"```python\n(.*?)```", card_text, re.S).group(1)
    run_python(snippet, env)
