"""The `supcon` image objective (labels on part of the data, a tiny real run, exact resume, clear refusals) and
SimCSE's SupCon mode for labelled sentence pairs (the loss's positives, a tiny real run)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from clirun import assert_clear_error, mmssl_here, write_recipe
from helpers import TINY_BERT
from image_ssl_recipes import image_objective, image_recipe, losses

from mmssl.data.label_fraction import labelled_rows
from mmssl.losses import info_nce
from mmssl.losses.supcon import supcon
from mmssl.models.vision import load_backbone
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective
from mmssl.train.loop import train


def test_labels_are_the_label_fraction_rows_and_reach_the_loss(tmp_path):
    obj = image_objective(tmp_path, "supcon", label_fraction=0.25, temperature=0.3, eval_before=False)
    keep = labelled_rows(obj.train.labels, 0.25, 0, obj.class_names)
    assert torch.equal(obj.used_labels >= 0, keep) and torch.equal(obj.used_labels[keep], obj.train.labels[keep])
    assert 0.2 < float(keep.float().mean()) < 0.3
    batch = obj.prepare_batch({"index": torch.arange(16)})
    obj.module.eval()
    out = obj.step_loss(obj.module, batch)
    z1, z2 = obj.module(batch["view1"], batch["view2"])
    assert torch.allclose(out["loss"], supcon(z1, z2, obj.used_labels[:16], 0.3))
    assert float(out["labelled"]) == pytest.approx(float(keep[:16].float().mean()))


@pytest.mark.slow
def test_trains_evaluates_and_exports(tmp_path):
    out = tmp_path / "run"
    raw = image_recipe(out, "supcon", label_fraction=0.5, temperature=0.2)
    raw["train"].update(max_steps=20, log_every=2, learning_rate=1e-2)
    metrics = train(parse_recipe(raw))
    logged = losses(out)
    assert sum(logged[-3:]) / 3 < logged[0] - 0.3, logged  # fixed seed: the loss goes down
    result = metrics["eval"]
    assert 0 <= result["knn_top1"] <= 1 and math.isfinite(result["random_init_knn_top1"]) and result["collapsed"] == 0
    backbone = load_backbone(str(out))  # a plain timm backbone, no projection head
    assert backbone(torch.zeros(2, 3, 16, 16)).shape == (2, backbone.dim)


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    from clirun import straight_and_resumed_here

    raw = image_recipe(tmp_path / "unused", "supcon", eval_before=False, linear_probe=False, label_fraction=0.5)
    raw["train"].update(max_steps=12, save_every=4, keep_checkpoints=10)
    a, b, _ = straight_and_resumed_here(raw, tmp_path, 4, 12)
    assert a.keys() == b.keys() and any("projection" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_a_fraction_that_empties_a_class_and_streaming_are_refused_clearly(tmp_path):
    raw = image_recipe(tmp_path / "run", "supcon", label_fraction=0.01, eval_before=False)
    done = mmssl_here("train", str(write_recipe(tmp_path / "r.yaml", raw)))
    assert_clear_error(done, "label fraction 0.01 leaves class(es)", "use a fraction of at least")
    raw = image_recipe(tmp_path / "run2", "supcon", eval_before=False)
    raw["data"]["streaming"] = True
    done = mmssl_here("train", str(write_recipe(tmp_path / "s.yaml", raw)))
    assert_clear_error(done, "cannot train on streamed data", "class label")


# ---------------------------------------------------------------- sentence pairs (SimCSE's supcon mode)


def text_raw(tmp_path, **objective) -> dict:
    return {
        "output_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 200}},
        "tokenizer": {"vocab_size": 300},
        "model": {"arch": "bert", "config": dict(TINY_BERT)},
        "objective": {"name": "simcse", "mode": "supervised", "max_length": 32, "eval_before": False,
                      "supcon": True, **objective},
        "train": {"batch_size": 16, "max_steps": 12, "log_every": 2, "progress": False, "save_every": 0,
                  "eval_every": 0, "cpu": True, "learning_rate": 3e-3},
    }


def test_pairs_with_the_anchors_label_are_positives(tmp_path):
    torch.set_num_threads(1)
    obj = get_objective("simcse")(parse_recipe(text_raw(tmp_path, label_fraction=0.5)))
    obj.setup()
    labels = torch.tensor([obj.train_dataset[i]["label"] for i in range(len(obj.train_dataset))])
    assert 0.4 < float((labels >= 0).float().mean()) < 0.6 and len(obj.label_names) > 4
    batch = obj.collate([obj.train_dataset[i] for i in range(32)])
    assert torch.equal(batch["labels"], labels[:32]) and (labels[:32] >= 0).sum() > (labels[:32] >= 0).unique().numel()
    obj.module.eval()
    embeddings = obj.module(packed=batch["packed"])
    out = obj.loss(obj.module, embeddings, batch)
    query, rest = obj.split_views(embeddings, batch)
    # the naive positives: the own pair, and every pair whose anchor has the same (kept) label
    b, cols = 32, rest.shape[0] * 32
    pos = torch.zeros(b, cols, dtype=torch.bool)
    for i in range(b):
        for j in range(b):
            pos[i, j] = i == j or (labels[i] >= 0 and labels[i] == labels[j])
    hashes = batch["hashes"]
    duplicates = hashes[1][:, None] == hashes[1:].reshape(-1)[None, :]
    duplicates[torch.arange(b), torch.arange(b)] = False
    ref = info_nce(query, rest[0], extra_negatives=rest[1:].reshape(-1, query.shape[1]), temperature=0.05,
                   positive_mask=pos, false_negative_mask=duplicates)
    assert torch.allclose(out["loss"], ref)
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}  # plain supervised SimCSE: one positive
    assert not torch.allclose(ref, obj._info_nce(obj.module, query, rest, unlabelled)["loss"])


@pytest.mark.slow
def test_supcon_pairs_train_and_a_missing_label_column_is_refused(tmp_path):
    torch.set_num_threads(1)
    metrics = train(parse_recipe(text_raw(tmp_path / "a", label_fraction=0.5)))
    logged = [e["loss"] for e in map(json.loads, (tmp_path / "a" / "run" / "log.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    assert logged[-1] < logged[0], logged
    assert 0 <= metrics["eval"]["recall@1"] <= 1
    raw = text_raw(tmp_path / "b", label_column="topic")
    done = mmssl_here("train", str(write_recipe(tmp_path / "t.yaml", raw)))
    assert_clear_error(done, "column 'topic' is not in the data", "objective.label_column")
