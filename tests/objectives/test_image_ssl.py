"""What every image self-supervised method shares, through the real trainer and the shared base
(`mmssl/objectives/image_ssl.py`): each method trains, evaluates its frozen backbone against the random-init floor
and exports a backbone that loads back; a run killed after a checkpoint resumes bit-identical, momentum target,
queue, memory bank and pseudo-labels included; two processes train in sync; bad recipes are one clear message.
Each method's own behaviour is tested in its own file, tests/objectives/test_<method>.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from clirun import assert_clear_error, mmssl, straight_and_resumed, write_recipe
from image_ssl_recipes import image_recipe, losses

from mmssl.hub import render_card
from mmssl.models.vision import load_backbone
from mmssl.recipes import parse_recipe
from mmssl.train.loop import train


@pytest.mark.slow
@pytest.mark.parametrize("method, objective", [
    ("simclr", {"temperature": 0.5}),
    ("simclr", {"temperature": 0.5, "bank_negatives": 32}),
    ("moco", {"variant": "v2", "queue_size": 64}),
    ("moco", {"variant": "v3"}),
    ("byol", {}),
    ("simsiam", {}),
    ("rotnet", {}),
    ("instdisc", {"num_negatives": 32}),
    ("instdisc", {"num_negatives": 32, "loss": "softmax", "proximal": 1.0}),
    ("jigsaw", {"permutations": 10, "gap": 1}),
    ("swav", {"num_prototypes": 8, "small_crops": 2, "small_crop_size": 8, "small_crop_scale": [0.2, 0.5],
              "freeze_prototypes_steps": 2, "queue_length": 16, "queue_start_step": 2}),
    ("deepcluster", {"num_clusters": 8, "pca_dim": 8}),
    ("colorization", {"grid": 4, "rebalance_images": 64}),
    ("colorization", {"mode": "regression", "grid": 4}),
])
def test_each_method_trains_evaluates_and_exports(tmp_path, method, objective):
    out = tmp_path / "run"
    metrics = train(parse_recipe(image_recipe(out, method, **objective)))
    result = metrics["eval"]
    for key in ("knn_top1", "linear_probe_top1", "random_init_knn_top1", "random_init_linear_probe_top1",
                "feature_std_sqrt_d", "feature_effective_rank", "embedding_std_sqrt_d", "collapsed"):
        assert math.isfinite(result[key]), key
    assert 0 <= result["knn_top1"] <= 1 and result["knn_num_test"] > 0
    assert all(math.isfinite(v) for v in losses(out))
    backbone = load_backbone(out).eval()
    assert backbone.arch == "resnet18" and backbone.small_stem
    with torch.no_grad():
        assert backbone(torch.rand(2, 3, 16, 16)).shape == (2, 16)
    assert metrics["feature_dim"] == 16 and metrics["num_classes"] == 4
    card = render_card(out, "org/encoder")  # what `mmssl push` publishes: the method and its results
    assert f"objective `{method}`" in card and f"| kNN top-1 | {result['knn_top1']:.4f} |" in card


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    (["train.batch_size=1"], "SimCLR contrasts each image with the other images of the batch"),
    (["train.optimizer=lars", "train.weight_decay=0"], "train.optimizer=lars adapts only parameter groups with weight decay"),
    (["model.arch=resnet81"], "model.arch: 'resnet81' is not a timm model"),
    (["data.source=files", "data.path=EMPTY", "data.format=imagefolder"], "no images"),
])
def test_bad_image_recipes_are_one_clear_message(tmp_path, override, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    recipe = write_recipe(tmp_path / "r.yaml", image_recipe(tmp_path / "run", "simclr"))
    args = [o.replace("EMPTY", str(tmp_path / "empty")) for o in override]
    assert_clear_error(mmssl("train", str(recipe), *args), message)


@pytest.mark.slow
@pytest.mark.parametrize("method, objective", [("byol", {}), ("moco", {"variant": "v2", "queue_size": 48}),
                                               ("instdisc", {"num_negatives": 32}),
                                               ("swav", {"num_prototypes": 8, "small_crops": 2, "small_crop_size": 8,
                                                         "queue_length": 32, "queue_start_step": 4,
                                                         "freeze_prototypes_steps": 6}),
                                               ("deepcluster", {"num_clusters": 8, "pca_dim": 8})])
def test_killed_run_resumes_bit_identical_with_momentum_target_and_queue(tmp_path, method, objective):
    """Momentum target, queue, memory bank (and NCE's log Z), sampled negatives, schedule position and views
    (functions of seed, epoch and row) all come back: a run killed after its first checkpoint and resumed ends
    with exactly the weights of an unbroken run."""
    raw = image_recipe(tmp_path / "unused", method, eval_before=False, linear_probe=False, **objective)
    raw["train"].update(max_steps=24, save_every=4, keep_checkpoints=10)  # 10 batches per epoch: crosses epochs
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    a, b, killed_at = straight_and_resumed(recipe, tmp_path, 8, 24)
    broken = tmp_path / "broken"
    assert a.keys() == b.keys() and any(w in k for k in a for w in ("target", "key_", "bank", "queue", "pseudo"))
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    starts = [json.loads(line)["step"] for line in (broken / "log.jsonl").read_text().splitlines() if '"start"' in line]
    assert starts == [0, killed_at]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("method, objective", [("simclr", {}), ("moco", {"variant": "v2", "queue_size": 48})])
def test_two_processes_train_in_sync(tmp_path, method, objective):
    """Two real processes (torchrun, gloo): negatives / queue keys gathered across them, weights equal on both."""
    import subprocess

    from clirun import cli_env
    from helpers import PYTHON

    out = tmp_path / "run"
    raw = image_recipe(out, method, eval_before=False, linear_probe=False, **objective)
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    done = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mmssl", "train", str(recipe)], env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["parameters_in_sync"]
    assert math.isfinite(metrics["eval"]["knn_top1"])
