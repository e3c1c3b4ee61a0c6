"""FixMatch: the labelled batch is a function of (seed, epoch, row) drawn from the fraction's labelled rows only; a
tiny run through the real trainer whose supervised loss goes down, evaluated (the classifier's own top-1) and
exported with its classifier; exact resume; one clear refusal for a fraction that empties a class and for streams."""

from __future__ import annotations

import json
import math

import pytest
import torch
from clirun import assert_clear_error, mmssl_here, write_recipe
from image_ssl_recipes import image_objective, image_recipe

from mmssl.data.label_fraction import labelled_rows
from mmssl.models.vision import load_backbone
from mmssl.recipes import parse_recipe
from mmssl.train.loop import train


def test_the_labelled_batch_comes_from_the_labelled_rows_as_a_function_of_seed_epoch_and_row(tmp_path):
    obj = image_objective(tmp_path, "fixmatch", eval_before=False, label_fraction=0.25, mu=4)
    keep = labelled_rows(obj.train.labels, 0.25, 0, obj.class_names)
    assert torch.equal(obj.labelled, keep)
    rows = torch.arange(0, 64, 2)
    batch = obj.prepare_batch({"index": rows})
    assert batch["labelled"].shape[0] == 8 and batch["view1"].shape[0] == batch["view2"].shape[0] == 32
    picked = obj.labelled_batch(rows[:8])
    assert bool(keep[picked].all()) and torch.equal(batch["labels"], obj.train.labels[picked])
    assert not torch.equal(batch["view1"], batch["view2"])  # weak and strong views differ
    again = obj.prepare_batch({"index": rows})
    assert all(torch.equal(batch[k], again[k]) for k in ("labelled", "labels", "view1", "view2"))
    obj.set_epoch(1)
    later = obj.prepare_batch({"index": rows})
    assert not torch.equal(later["labelled"], batch["labelled"])  # a new epoch draws and augments anew


@pytest.mark.slow
def test_trains_evaluates_and_exports_with_its_classifier(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    raw = image_recipe(out, "fixmatch", eval_before=False, label_fraction=0.25, mu=1, threshold=0.7)
    raw["train"].update(max_steps=16, log_every=4, learning_rate=1e-2)
    metrics = train(parse_recipe(raw))
    logged = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]
    supervised = [e["supervised_loss"] for e in logged]
    # fixed seed: the labelled cross-entropy falls, below chance (4 shapes)
    assert supervised[-1] < min(0.95 * supervised[0], math.log(4)), supervised
    assert all(0 <= e["mask_rate"] <= 1 and 0 <= e["pseudo_label_accuracy"] <= 1 for e in logged)
    result = metrics["eval"]
    assert 0 <= result["classifier_top1"] <= 1 and 0 <= result["labelled_probe_top1"] <= 1
    assert math.isfinite(result["knn_top1"]) and result["labelled_images"] > 0
    backbone = load_backbone(str(out))
    head = load_file(str(out / "fixmatch_classifier.safetensors"))
    weight = next(v for k, v in head.items() if k.endswith("weight"))
    meta = json.loads((out / "mmssl_image_eval.json").read_text())
    assert weight.shape == (len(meta["class_names"]), backbone.dim) and meta["label_fraction"] == 0.25


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    from clirun import straight_and_resumed_here

    raw = image_recipe(tmp_path / "unused", "fixmatch", eval_before=False, linear_probe=False, label_fraction=0.25,
                       mu=2, threshold=0.5)
    raw["train"].update(max_steps=12, save_every=4, keep_checkpoints=10)
    a, b, _ = straight_and_resumed_here(raw, tmp_path, 4, 12)
    assert a.keys() == b.keys() and any("classifier" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_a_fraction_that_empties_a_class_and_streaming_are_refused_clearly(tmp_path):
    raw = image_recipe(tmp_path / "run", "fixmatch", label_fraction=0.01, eval_before=False)
    done = mmssl_here("train", str(write_recipe(tmp_path / "r.yaml", raw)))
    assert_clear_error(done, "label fraction 0.01 leaves class(es)", "use a fraction of at least")
    raw = image_recipe(tmp_path / "run2", "fixmatch", eval_before=False)
    raw["data"]["streaming"] = True
    done = mmssl_here("train", str(write_recipe(tmp_path / "s.yaml", raw)))
    assert_clear_error(done, "cannot train on streamed data", "label")
