"""The `simcse` objective: loss wiring, GradCache equivalence, MoCo queue, hard-negative columns, bad input,
and a fixed-seed quality check on the built-in world. Tiny BERTs (hidden 32, 2 layers) keep it fast."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from helpers import TINY_BERT

from mmssl.errors import DataError, RecipeError
from mmssl.losses import duplicate_mask, info_nce
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective



@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, OpenMP spin-waiting under load slows steps 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_raw(tmp_path, objective=None, train=None, data=None) -> dict:
    return {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 200}, **(data or {})},
        "tokenizer": {"vocab_size": 300},
        "model": {"arch": "bert", "config": dict(TINY_BERT)},
        "objective": {"name": "simcse", "max_length": 32, "eval_before": False, **(objective or {})},
        "train": {"batch_size": 8, "max_steps": 2, "progress": False, "save_every": 0, "eval_every": 0,
                  "cpu": True, **(train or {})},
    }


def make(tmp_path, **kw):
    recipe = parse_recipe(tiny_raw(tmp_path, **kw))
    objective = get_objective("simcse")(recipe)
    objective.setup()
    return objective


def grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def step(objective, module, rows, seed=7):
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = objective.training_step(module, objective.collate(rows), lambda loss: loss.backward())
    return out, grads(module)


@pytest.mark.slow
@pytest.mark.parametrize("objective_params", [
    {"mode": "supervised", "hard_negatives": True, "learnable_temperature": True},
    {"mode": "unsupervised", "head": "mlp"},
], ids=["supervised-hardneg-learnable", "unsupervised-mlp"])
def test_cached_gradients_equal_uncached(tmp_path, objective_params):
    """GradCache inside training_step gives the gradients of the plain step with the same chunks (dropout on)."""
    obj = make(tmp_path, objective={**objective_params, "batching": "buckets", "bucket_size": 4})
    module = obj.module
    module.train()
    rows = [obj.train_dataset[i] for i in range(8)]
    ref_out, ref = step(obj, module, rows)
    obj.params.cached_chunk_size = 4
    out, got = step(obj, module, rows)
    assert torch.allclose(out["loss"], ref_out["loss"], atol=1e-6)
    assert ref.keys() == got.keys() and len(ref) > 10
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-5, rtol=1e-4), name
    # a different dropout seed changes the gradients: the comparison above is not vacuous
    _, other = step(obj, module, rows, seed=8)
    assert any(not torch.allclose(other[n], ref[n], atol=1e-5, rtol=1e-4) for n in ref)


def test_cached_step_scales_with_trainer_backward(tmp_path):
    """The trainer's `backward` (which scales for accumulation) is used for the cached loss."""
    obj = make(tmp_path, objective={"cached_chunk_size": 4, "bucket_size": 4})
    rows = [obj.train_dataset[i] for i in range(8)]
    _, full = step(obj, obj.module, rows)
    obj.module.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    calls = []

    def half(loss):
        calls.append(loss.item())
        (loss / 2).backward()

    obj.training_step(obj.module, obj.collate(rows), half)
    assert len(calls) == 1
    for name, g in grads(obj.module).items():
        assert torch.allclose(g * 2, full[name], atol=1e-5, rtol=1e-4), name


def test_infonce_uses_hard_negatives_and_masks_duplicate_positives(tmp_path):
    obj = make(tmp_path, objective={"mode": "supervised"})
    assert obj.views == ["anchor", "positive", "negative"]
    torch.manual_seed(0)
    b, d = 4, 6
    emb = torch.randn(3 * b, d)
    hashes = torch.arange(3 * b).view(3, b)
    hashes[1, 1] = hashes[1, 0]  # rows 0 and 1 have the same positive text
    batch = {"num_rows": b, "num_views": 3, "hashes": hashes}
    got = obj.loss(obj.module, emb, batch)
    q, k, n = emb[:b], emb[b : 2 * b], emb[2 * b :]
    mask = duplicate_mask(hashes[1], torch.cat([hashes[1], hashes[2]]))
    want = info_nce(q, k, extra_negatives=n, temperature=0.05, false_negative_mask=mask)
    assert torch.allclose(got["loss"], want)
    assert not torch.allclose(got["loss"], info_nce(q, k, extra_negatives=n, temperature=0.05))
    assert torch.allclose(got["mi_lower_bound"], torch.log(torch.tensor(8.0)) - want)


@pytest.mark.parametrize("loss", ["triplet", "margin"])
def test_margin_losses_run_and_learn_signal(tmp_path, loss):
    obj = make(tmp_path, objective={"loss": loss})
    rows = [obj.train_dataset[i] for i in range(8)]
    out, g = step(obj, obj.module, rows)
    assert out["loss"] > 0 and any(v.abs().sum() > 0 for v in g.values())


def test_queue_fills_and_is_saved_in_state(tmp_path):
    obj = make(tmp_path, objective={"negatives": "queue", "queue_size": 12, "momentum": 0.5})
    module = obj.module
    assert module.queue is not None and len(module.queue) == 0
    before = copy.deepcopy(module.key_encoder.state_dict())
    rows = [obj.train_dataset[i] for i in range(8)]
    out, _ = step(obj, module, rows)
    assert len(module.queue) == 8
    with torch.no_grad():  # an optimiser step of the online encoder
        for p in module.encoder.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    step(obj, module, rows)
    assert len(module.queue) == 12  # full: FIFO overwrites
    state = module.state_dict()
    assert {"queue.queue", "queue.ptr", "queue.filled"} <= set(state)
    assert any(k.startswith("key_encoder.") for k in state)
    # micro-batches leave the momentum encoder alone; the optimiser step moves it, once, by the EMA rule
    assert all(torch.equal(before[k], v) for k, v in module.key_encoder.state_dict().items())
    online = {k: v.detach().clone() for k, v in module.encoder.named_parameters()}
    obj.after_optimizer_step(module, 1, 10)
    moved = dict(module.key_encoder.named_parameters())
    assert any(not torch.equal(before[k], moved[k]) for k in moved)
    for k in moved:
        assert torch.allclose(moved[k], 0.5 * before[k] + 0.5 * online[k], atol=1e-6), k
    assert all(p.grad is None for p in module.key_encoder.parameters())


def test_negative_columns_are_detected(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"anchor": f"a red circle number {i}", "positive": f"the circle {i} is red",
             "negative_1": f"a blue square {i}", "negative_2": f"a green star {i}"} for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    obj = make(tmp_path, data={"source": "files", "path": str(path)})
    assert obj.views == ["anchor", "positive", "negative_1", "negative_2"]
    batch = obj.collate([obj.train_dataset[i] for i in range(4)])
    assert batch["num_views"] == 4 and batch["hashes"].shape == (4, 4)
    out, _ = step(obj, obj.module, [obj.train_dataset[i] for i in range(4)])
    assert torch.isfinite(out["loss"])


def test_empty_side_is_a_data_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"anchor": "a red circle", "positive": "the circle is red"}] * 5 + [{"anchor": "a cat", "positive": "  "}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match="row 5 has an empty or missing 'positive'"):
        make(tmp_path, data={"source": "files", "path": str(path), "eval_fraction": 0.0})


def test_batch_size_one_has_no_negatives(tmp_path):
    with pytest.raises(RecipeError, match="no negatives"):
        make(tmp_path, objective={"hard_negatives": False}, train={"batch_size": 1})
    # with a hard-negative column batch size 1 still has a negative
    assert make(tmp_path, train={"batch_size": 1}).views[-1] == "negative"


def test_zero_temperature_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match=r"objective.temperature: 0.0 is out of range; it must be > 0; typical values"):
        parse_recipe(tiny_raw(tmp_path, objective={"temperature": 0}))


def test_columns_not_matching_the_objective(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"anchor": f"x {i}", "positive": f"y {i}"}) for i in range(30)))
    with pytest.raises(DataError, match="column 'text'"):
        make(tmp_path, objective={"mode": "unsupervised"}, data={"source": "files", "path": str(path)})


@pytest.mark.slow
def test_short_training_improves_retrieval(tmp_path):
    """Fixed seed: 40 steps of supervised SimCSE raise recall@1 on the held-out world pairs."""
    from mmssl.train.loop import train

    raw = tiny_raw(tmp_path, objective={"eval_before": True, "eval_max_pairs": 200},
                   train={"batch_size": 32, "max_steps": 40, "learning_rate": 2e-3},
                   data={"world": {"num_scenes": 600}})
    metrics = train(parse_recipe(raw))
    before, after = metrics["eval_before"], metrics["eval"]
    assert after["recall@1"] > before["recall@1"] + 0.1, (before, after)
    assert after["mrr@10"] > before["mrr@10"]
    assert after["hard_negative_accuracy"] > before["hard_negative_accuracy"]


VIEWS = [{"type": "synonym", "p": 0.3}, {"type": "insert", "p": 0.2}]


def test_text_views_make_the_positive_per_example_and_epoch(tmp_path):
    """Unsupervised mode with text_views: the second view is an edit of the first, a function of
    (seed, epoch, row) only: the same again for the same epoch, other edits in the next."""
    obj = make(tmp_path, objective={"mode": "unsupervised", "text_views": VIEWS})
    rows = [obj.train_dataset[i] for i in range(16)]
    decode = obj.tokenizer.batch_decode

    def views(epoch: int, batch_rows) -> list[str]:
        obj.set_epoch(epoch)
        packed = obj.collate(batch_rows)
        assert packed["num_views"] == 2
        ids = [r["text_ids"] for r in batch_rows]
        second = obj.tokenizer(obj.text_views([r["text"] for r in batch_rows], [r["index"] for r in batch_rows],
                                              epoch), truncation=True, max_length=32)["input_ids"]
        assert packed["tokens"] == sum(map(len, ids)) + sum(map(len, second))
        return decode(second, skip_special_tokens=True), float(packed["views_changed"])

    first, changed = views(0, rows)
    anchors = decode([r["text_ids"] for r in rows], skip_special_tokens=True)
    assert changed >= 0.5 and sum(a != v for a, v in zip(anchors, first)) >= 8
    assert views(0, rows)[0] == first                           # same epoch: same views
    assert views(0, rows[8:])[0] == first[8:]                   # ... whatever else is in the batch
    assert views(1, rows)[0] != first                           # next epoch: other edits
    out, _ = step(obj, obj.module, rows)
    assert torch.isfinite(out["loss"]) and 0.5 <= float(out["views_changed"]) <= 1.0
    assert obj.describe()["text_views"][0]["name"] == "synonym"


def test_text_views_need_unsupervised_mode(tmp_path):
    with pytest.raises(RecipeError, match="text_views make the positives of mode=unsupervised"):
        parse_recipe(tiny_raw(tmp_path, objective={"mode": "supervised", "text_views": VIEWS}))
    with pytest.raises(RecipeError, match="objective.text_views"):
        parse_recipe(tiny_raw(tmp_path, objective={"mode": "unsupervised", "text_views": [{"type": "paraphrase"}]}))


NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def count_forwards(encoder_model) -> list[int]:
    calls: list[int] = []
    encoder_model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("objective_params", [
    {"mode": "supervised", "hard_negatives": True},
    {"mode": "supervised", "negatives": "queue", "queue_size": 32},
    {"mode": "unsupervised"},
], ids=["hard-negatives", "moco-queue", "unsupervised"])
def test_packed_batches_take_one_encoder_pass_and_train_exactly_like_padded_ones(tmp_path, objective_params):
    raw = tiny_raw(tmp_path, objective={**objective_params, "batching": "packed"})
    raw["model"]["config"] = dict(NO_DROPOUT)
    obj = get_objective("simcse")(parse_recipe(raw))
    obj.setup()
    calls = count_forwards(obj.model.encoder.model)
    rows = [obj.train_dataset[i] for i in range(16)]
    state = copy.deepcopy(obj.module.state_dict())  # MoCo's queue grows each step: both start from this
    losses, gradients = {}, {}
    for batching in ("packed", "padded"):
        obj.layout.kind = batching
        obj.module.load_state_dict(state)
        calls.clear()
        out, gradients[batching] = step(obj, obj.module, rows)
        losses[batching] = out["loss"]
        assert len(calls) == 1  # every view and negative of the batch in one pass (+ the key encoder's, apart)
    assert abs(losses["packed"] - losses["padded"]) < 1e-5
    assert gradients["packed"].keys() == gradients["padded"].keys() and len(gradients["padded"]) > 10
    for name, grad in gradients["padded"].items():
        assert torch.allclose(gradients["packed"][name], grad, atol=1e-5, rtol=1e-4), name


def test_packed_gradcache_equals_packed_without_cache(tmp_path):
    raw = tiny_raw(tmp_path, objective={"mode": "supervised", "batching": "packed"})
    raw["model"]["config"] = dict(NO_DROPOUT)
    obj = get_objective("simcse")(parse_recipe(raw))
    obj.setup()
    rows = [obj.train_dataset[i] for i in range(8)]
    ref_out, ref = step(obj, obj.module, rows)
    obj.params.cached_chunk_size = 4
    batch = obj.collate(rows)
    assert len(batch["packed"]["groups"]) == 6  # anchors, positives, negatives: 24 sequences in chunks of 4
    out, got = step(obj, obj.module, rows)
    assert abs(out["loss"] - ref_out["loss"]) < 1e-5
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-5, rtol=1e-4), name


def setup_with(tmp_path, arch: str, **objective):
    raw = tiny_raw(tmp_path, objective=objective)
    raw["model"]["arch"] = arch
    obj = get_objective("simcse")(parse_recipe(raw))
    obj.setup()
    return obj


def test_auto_batching_packs_where_the_model_allows_and_falls_back_per_device(tmp_path, monkeypatch):
    """CPU: packed rows of 64 tokens for BERT, buckets for a model that cannot be packed (DeBERTa-v2's relative
    attention takes no block mask); a GPU (the decision only: none here) gets rows of 256 or one padded pass."""
    bert = setup_with(tmp_path / "a", "bert")
    assert bert.layout.kind == "packed" and bert.layout.row_length == 64
    deberta = setup_with(tmp_path / "b", "deberta-v2")
    assert deberta.layout.kind == "buckets"
    assert len(deberta.collate([deberta.train_dataset[i] for i in range(8)])["packed"]["groups"]) == 1  # 16 <= 32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    raw = tiny_raw(tmp_path / "c", train={"cpu": False})
    obj = get_objective("simcse")(parse_recipe(raw))
    obj.setup()
    assert obj.layout.kind == "packed" and obj.layout.row_length == 256
    raw = tiny_raw(tmp_path / "d", train={"cpu": False})
    raw["model"]["arch"] = "deberta-v2"
    obj = get_objective("simcse")(parse_recipe(raw))
    obj.setup()
    assert obj.layout.kind == "padded"


def test_forcing_packing_on_a_model_that_cannot_be_packed_is_a_clear_error(tmp_path):
    with pytest.raises(RecipeError, match=r"batching=packed: model type 'deberta-v2' cannot be packed.*buckets or padded"):
        setup_with(tmp_path, "deberta-v2", batching="packed")


def test_a_new_text_loss_is_one_subclass_with_one_method(tmp_path):
    """The text base does data, tokenizer, encoder and batching; a method only writes `loss`."""
    from mmssl.objectives.text import TextObjective

    class Alignment(TextObjective):  # unregistered: the registry is global to the test session
        def loss(self, core, embeddings, batch):
            anchor, others = self.split_views(embeddings, batch)
            self.seen = (anchor - others[0]).pow(2).sum(-1).mean()
            return {"loss": self.seen}

    obj = Alignment(parse_recipe(tiny_raw(tmp_path, objective={"hard_negatives": False})))
    obj.setup()
    rows = [obj.train_dataset[i] for i in range(4)]
    out, g = step(obj, obj.module, rows)
    assert obj.views == ["anchor", "positive"] and torch.equal(out["loss"], obj.seen.detach())
    assert any(v.abs().sum() > 0 for v in g.values())
