"""Image-only self-supervised methods on a tiny world, through the real trainer: each trains, evaluates its frozen
backbone against the random-init floor and exports a backbone that loads back; BYOL's target gets no gradient
and follows its momentum schedule; MoCo's queue fills; clear errors for bad recipes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from clirun import assert_clear_error, mmssl, straight_and_resumed, write_recipe

from mmssl.errors import RecipeError
from mmssl.hub import render_card
from mmssl.models.vision import load_backbone
from mmssl.objectives.jigsaw import GRID, cut_tiles, min_hamming_distance, permutation_set
from mmssl.objectives.rotnet import rotate_batch
from mmssl.recipes import parse_recipe
from mmssl.registry import get_objective
from mmssl.train.loop import train

TINY_RESNET = {"channels": [8, 8, 16, 16], "small_stem": True}


def image_recipe(output_dir, method: str, **objective) -> dict:
    return {
        "name": f"test-{method}", "output_dir": str(output_dir), "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 160, "image_size": 16, "pair_fraction": 0.0}},
        "model": {"arch": "resnet18", "config": dict(TINY_RESNET)},
        "objective": {"name": method, "image_size": 16, "projection_dim": 16, "hidden_dim": 32,
                      "eval_max_images": 200, **objective},
        "train": {"batch_size": 16, "learning_rate": 3e-3, "max_steps": 6, "log_every": 2, "progress": False,
                  "cpu": True},
    }


def losses(output_dir) -> list[float]:
    return [e["loss"] for e in map(json.loads, (output_dir / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]


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


def test_simclr_loss_goes_down(tmp_path):
    """Mild views (crops only) so that 60 steps of a tiny ResNet on 16 px images visibly learn; 0.5-0.7 nats
    below the first logged loss for seeds 0-2, asserted with margin, averaged over the last three logs."""
    out = tmp_path / "run"
    views = {"crop_scale": [0.5, 1.0], "color_jitter": 0.0, "grayscale": 0.0}
    raw = image_recipe(out, "simclr", temperature=0.5, views=views, eval_max_images=40)
    raw["train"].update(max_steps=60, log_every=5)
    train(parse_recipe(raw))
    values = losses(out)
    assert sum(values[-3:]) / 3 < values[0] - 0.3, values


def _objective(tmp_path, method: str, **objective):
    recipe = parse_recipe(image_recipe(tmp_path / "o", method, **objective))
    obj = get_objective(method)(recipe)
    obj.setup()
    return obj


def test_byol_target_gets_no_gradient_and_follows_the_cosine_schedule(tmp_path):
    obj = _objective(tmp_path, "byol", eval_before=False)
    module = obj.module
    batch = obj.prepare_batch(obj.collate(list(range(8))))
    out = obj.forward(module, batch)
    out["loss"].backward()
    target = list(module.target_backbone.parameters()) + list(module.target_projection.parameters())
    assert target and all(not p.requires_grad and p.grad is None for p in target)
    assert all(p.grad is not None for p in module.prediction.parameters())
    before = [p.detach().clone() for p in module.target_backbone.parameters()]
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(1.0)
    obj.after_optimizer_step(module, 0, 100)
    assert obj.tau == pytest.approx(0.996)
    moved = list(module.target_backbone.parameters())
    # tau = 0.996: the target moves 0.4% of the way to the online weights (which moved by +1)
    assert all(torch.allclose(m, b + 0.004 * (o - b), atol=1e-6)
               for m, b, o in zip(moved, before, module.backbone.parameters()))
    obj.after_optimizer_step(module, 50, 100)
    assert obj.tau == pytest.approx(0.998)
    obj.after_optimizer_step(module, 100, 100)
    assert obj.tau == pytest.approx(1.0)


def test_simsiam_stops_the_gradient_of_the_target_branch(tmp_path):
    from mmssl.losses import symmetric_negative_cosine

    obj = _objective(tmp_path, "simsiam", eval_before=False)
    module = obj.module
    batch = obj.prepare_batch(obj.collate(list(range(8))))
    p1, p2, z1, z2 = module(batch["view1"], batch["view2"])
    for t in (p1, p2, z1, z2):
        t.retain_grad()
    symmetric_negative_cosine(p1, p2, z1, z2).backward()
    # the projections z enter the loss only as (stopped) targets: no gradient reaches them that way, while the
    # predictions p, and through them the projection and backbone, get one
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    assert all(q.grad is not None for q in module.projection.parameters())
    assert all(q.grad is not None for q in module.backbone.parameters() if q.requires_grad)


def test_moco_v2_queue_fills_with_the_keys_of_each_step(tmp_path):
    obj = _objective(tmp_path, "moco", variant="v2", queue_size=32, eval_before=False)
    module = obj.module
    for start in (0, 8, 16):
        batch = obj.prepare_batch(obj.collate(list(range(start, start + 8))))
        obj.forward(module, batch)["loss"].backward()
    # first step: its keys seed the queue (16 = both views of 8 images), then each step adds 16 more
    assert len(module.queue) == 32
    state = module.state_dict()
    assert {"queue.queue", "queue.ptr", "queue.filled"} <= set(state) and any(k.startswith("key_backbone.") for k in state)


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


def test_a_sharded_memory_bank_trains_exactly_as_a_replicated_one_on_two_processes(tmp_path):
    """InstDisc on two real processes: with the bank sharded each process holds half the rows, and the run ends
    with exactly the weights and the (gathered) bank of the same run with the bank replicated on both."""
    import subprocess

    from clirun import cli_env
    from helpers import PYTHON
    from safetensors.torch import load_file

    runs = {}
    for shard in (True, False):
        out = tmp_path / f"shard-{shard}"
        raw = image_recipe(out, "instdisc", num_negatives=32, shard_bank=shard, eval_before=False,
                           linear_probe=False)
        raw["train"].update(save_every=6)
        recipe = write_recipe(tmp_path / f"r-{shard}.yaml", raw)
        done = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "mmssl", "train", str(recipe)], env=cli_env(), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["processes"] == 2 and metrics["parameters_in_sync"]
        runs[shard] = (metrics, load_file(str(out / "checkpoints/step-00000006/model.safetensors")))
    (sharded, a), (replicated, b) = runs[True], runs[False]
    assert sharded["bank_rows"] == replicated["bank_rows"] == 160  # one row per training image
    assert sharded["bank_rows_per_process"] == 80 and replicated["bank_rows_per_process"] == 160
    assert a.keys() == b.keys() and a["bank.features"].shape == (160, 16)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_each_block_is_the_batch_turned_by_its_label():
    images = torch.rand(5, 3, 8, 8)
    rotated, labels = rotate_batch(images)
    assert rotated.shape == (20, 3, 8, 8) and labels.tolist() == [k for k in range(4) for _ in range(5)]
    for i in range(20):
        k, j = int(labels[i]), i % 5
        assert torch.equal(torch.rot90(rotated[i], -k, dims=(1, 2)), images[j])  # turning back gives the original
    assert torch.equal(rotated[5 + 2, :, 0, :], images[2, :, :, -1])  # 90 degrees counter-clockwise: top row = old right column
    assert not torch.equal(rotated[5], rotated[0])
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.rand(2, 3, 8, 6))


def test_rotnet_loss_and_accuracy_come_from_the_rotated_batch(tmp_path):
    """On a fixed batch of asymmetric images (noise), RotNet's loss falls and its rotation accuracy passes 90%:
    its labels and its classifier are wired to the rotated inputs. (The world's circles and squares look the
    same turned, so the world recipe's own learning is measured in the README, not here.)"""
    torch.manual_seed(0)
    obj = _objective(tmp_path, "rotnet")
    module = obj.module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    images = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    history = []
    for _ in range(40):
        out = obj.loss(module, images, None)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append((float(out["loss"].detach()), float(out["rotation_accuracy"])))
    assert history[-1][0] < history[0][0] - 0.5 and history[-1][1] >= 0.9, history[::10]
    assert out["embedding"].shape == (8, 16)  # the unrotated images' features feed the collapse monitor


def test_instdisc_bank_follows_the_embeddings_of_the_images_seen(tmp_path):
    """After a step, the bank rows of the batch's images moved towards their new embeddings (momentum 0.5) and
    no other row moved; log Z was estimated once and stays fixed."""
    torch.manual_seed(0)
    obj = _objective(tmp_path, "instdisc", num_negatives=16)
    module = obj.module.train()
    before = module.bank.features.clone()
    index = torch.tensor([3, 5, 11, 2])
    view = obj.views.view(obj.train.images[index], index, 0, 0, 0).contiguous(memory_format=torch.channels_last)
    out = obj.step_loss(module, {"view1": view, "index": index})
    query = out["embedding"]
    expected = torch.nn.functional.normalize(0.5 * before[index] + 0.5 * query, dim=1)
    assert torch.allclose(module.bank.features[index], expected, atol=1e-6)
    others = torch.ones(len(before), dtype=torch.bool)
    others[index] = False
    assert torch.equal(module.bank.features[others], before[others])
    log_z = float(module.log_z)
    assert math.isfinite(log_z)
    obj.step_loss(module, {"view1": view, "index": index})
    assert float(module.log_z) == log_z


def test_simclr_draws_bank_negatives_and_moves_the_rows_of_its_batch(tmp_path):
    obj = _objective(tmp_path, "simclr", bank_negatives=24)
    module = obj.module.train()
    before = module.bank.features.clone()
    batch = obj.prepare_batch({"index": torch.arange(3, 11)})
    seen = []
    original = module.bank.sample_shared
    module.bank.sample_shared = lambda num: seen.append(num) or original(num)
    loss = obj.step_loss(module, batch)["loss"]
    assert seen == [24] and math.isfinite(float(loss.detach()))
    moved = (module.bank.features != before).any(dim=1)
    assert moved[3:11].all() and not moved[:3].any() and not moved[11:].any()
    assert _objective(tmp_path / "plain", "simclr").module.bank is None


def test_jigsaw_permutation_set_keeps_its_promised_hamming_distance():
    nine = permutation_set(9)
    assert min_hamming_distance(nine) == 9  # 9 permutations can differ in every position
    hundred = permutation_set(100)
    assert hundred.shape == (100, 9) and min_hamming_distance(hundred) >= 6
    assert all(sorted(row) == list(range(9)) for row in hundred.tolist())
    assert len({tuple(row) for row in hundred.tolist()}) == 100
    assert (permutation_set(100, seed=0) == hundred).all() and (permutation_set(100, seed=1) != hundred).any()


def test_jigsaw_slot_j_holds_the_tile_of_the_cell_its_permutation_names(tmp_path):
    obj = _objective(tmp_path, "jigsaw", permutations=10, gap=0)  # no gap: tiles are exactly the grid cells
    torch.manual_seed(0)
    images = torch.rand(6, 3, 15, 15)
    tiles, labels = obj.puzzle(images)
    assert tiles.shape == (6, 9, 3, 5, 5) and labels.shape == (6,)
    for b in range(6):
        order = obj.perms[labels[b]].tolist()
        for slot, cell in enumerate(order):
            r, c = divmod(cell, GRID)
            assert torch.equal(tiles[b, slot], images[b, :, 5 * r : 5 * r + 5, 5 * c : 5 * c + 5])
    assert len(set(labels.tolist())) > 1
    gapped = _objective(tmp_path / "g", "jigsaw", permutations=10, gap=1)
    assert gapped.puzzle(images)[0].shape == (6, 9, 3, 4, 4)
    jitter = torch.randint(2, (6, 9, 2))  # tiles of 4 in cells of 5: each starts 0 or 1 px into its cell
    tiles = cut_tiles(images, 4, jitter)
    for b in range(6):
        for cell in range(9):
            y, x = 5 * (cell // GRID) + int(jitter[b, cell, 0]), 5 * (cell % GRID) + int(jitter[b, cell, 1])
            assert torch.equal(tiles[b, cell], images[b, :, y : y + 4, x : x + 4])
    with pytest.raises(RecipeError, match="leaves tiles under 4 px"):
        _objective(tmp_path / "h", "jigsaw", permutations=10, gap=2)  # 16 px: cells of 5, tiles of 3


def test_swav_prototypes_get_no_gradient_while_frozen_and_small_crops_join_the_step(tmp_path):
    obj = _objective(tmp_path, "swav", num_prototypes=8, small_crops=3, small_crop_size=8, freeze_prototypes_steps=5)
    module = obj.module.train()
    batch = obj.prepare_batch({"index": torch.arange(8)})
    assert batch["view1"].shape == (8, 3, 16, 16) and batch["small"].shape == (24, 3, 8, 8)
    assert not torch.equal(batch["small"][:8], batch["small"][8:16])  # each small crop draws its own
    for steps_done, frozen in ((0, True), (4, True), (5, False)):
        module.steps_done.fill_(steps_done)
        module.zero_grad(set_to_none=True)
        obj.step_loss(module, batch)["loss"].backward()
        assert (module.prototypes.weight.grad is None) == frozen, steps_done
        assert all(p.grad is not None for p in module.backbone.parameters() if p.requires_grad)
    assert torch.allclose(module.prototypes.weight.norm(dim=1), torch.ones(8), atol=1e-5)  # on the unit sphere


def test_deepcluster_reclusters_each_epoch_and_resets_its_head(tmp_path):
    torch.manual_seed(0)
    obj = _objective(tmp_path, "deepcluster", num_clusters=6, pca_dim=8)
    module = obj.module.train()
    batch = obj.prepare_batch({"index": torch.arange(16)})
    out = obj.step_loss(module, batch)
    labels = module.pseudo_labels.clone()
    assert int(module.labels_epoch) == 0 and labels.min() >= 0 and len(labels.unique()) == 6
    assert math.isfinite(float(out["loss"].detach())) and float(out["clusters_used"]) == 6
    head = module.head[0].weight.clone()
    obj.step_loss(module, batch)  # same epoch: same labels, no reset
    assert torch.equal(module.pseudo_labels, labels) and torch.equal(module.head[0].weight, head)
    with torch.no_grad():
        module.head[0].weight.add_(1.0)
    obj.set_epoch(1)
    obj.step_loss(module, batch)
    assert int(module.labels_epoch) == 1 and not torch.equal(module.head[0].weight, head + 1.0)  # a fresh head
    fresh = module.head[0].weight.clone()
    obj.set_epoch(2)
    obj.step_loss(module, batch)
    assert not torch.equal(module.head[0].weight, fresh)  # seeded by epoch: each epoch its own initialisation
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    obj.attach_optimizer(optimizer)
    obj.step_loss(module, batch)["loss"].backward()
    optimizer.step()
    head, body = list(module.head.parameters()), list(module.backbone.parameters())
    assert all(p in optimizer.state for p in head + body)
    obj.set_epoch(3)
    obj.step_loss(module, batch)  # a new head forgets its moments, the backbone keeps its own
    assert not any(p in optimizer.state for p in head) and all(p in optimizer.state for p in body)


def test_colorization_sees_only_lightness_and_predicts_the_cells_colours(tmp_path):
    from mmssl.data.lab import rgb_to_lab

    obj = _objective(tmp_path, "colorization", grid=4, rebalance_images=64)
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 16, 16)
    inputs, ab = obj.targets(rgb)
    lab = rgb_to_lab(rgb)
    grey = inputs * torch.tensor(obj.std).view(1, 3, 1, 1) + torch.tensor(obj.mean).view(1, 3, 1, 1)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-5)
    assert torch.allclose(grey[:, 0], lab[:, 0] / 100, atol=1e-5)  # the input is the lightness, nothing else
    assert torch.allclose(ab[:, :, 0, 0], lab[:, 1:, :4, :4].mean(dim=(2, 3)), atol=1e-4)  # cell (0, 0): its mean ab
    assert not torch.allclose(obj.targets(rgb[:, [2, 0, 1]])[1], ab)  # other colours, other targets
    assert obj.bin_weights.shape == (len(obj.bins),) and (obj.bin_weights > 0).all()


MAE_MODEL = {"arch": "vit_tiny_patch16_224", "config": {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32,
                                                        "num_heads": 2}}


def test_patchify_reads_patches_in_the_vits_order_and_the_loss_counts_masked_patches_only():
    from mmssl.losses.reconstruction import masked_patch_loss, patchify

    images = torch.rand(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches[1, 4].view(4, 4, 3), images[1, :, 4:8, 4:8].permute(1, 2, 0))  # row 1, column 1
    target, mask = torch.rand(2, 6, 48), torch.tensor([[1.0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 1, 1]])
    prediction = torch.rand(2, 6, 48)
    base = masked_patch_loss(prediction, target, mask)
    changed = prediction.clone()
    changed[mask == 0] += 5.0  # visible patches: no effect
    assert torch.equal(masked_patch_loss(changed, target, mask), base)
    changed[0, 0] += 1.0  # a masked patch: an effect
    assert masked_patch_loss(changed, target, mask) != base
    plain = ((prediction - target).pow(2).mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(masked_patch_loss(prediction, target, mask, norm_pix=False), plain)


def test_mae_encoder_sees_only_the_visible_quarter_and_exports_a_plain_timm_vit(tmp_path):
    import timm

    raw = image_recipe(tmp_path / "run", "mae", decoder_dim=16, decoder_depth=1, decoder_heads=2)
    raw["model"] = dict(MAE_MODEL)
    recipe = parse_recipe(raw)
    obj = get_objective("mae")(recipe)
    obj.setup()
    module = obj.module.train()
    seen = []
    module.backbone.model.blocks.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    batch = obj.prepare_batch({"index": torch.arange(4)})
    out = obj.step_loss(module, batch)
    assert seen == [(4, 1 + 4, 32)]  # 16 patches, 75% masked: the class token and 4 patches
    assert math.isfinite(float(out["loss"].detach()))
    metrics = train(parse_recipe(raw))
    assert 0 <= metrics["eval"]["knn_top1"] <= 1 and math.isfinite(metrics["eval"]["linear_probe_top1"])
    vit = timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True, num_classes=0)
    with torch.no_grad():
        assert vit(torch.rand(2, 3, 16, 16)).shape == (2, 32)


def test_mae_position_embeddings_are_the_papers_fixed_sine_cosine_table(tmp_path):
    """Against the MAE code's numpy formula (a meshgrid of (column, row), 1-D tables of sin | cos per axis); the
    encoder's and decoder's tables are fixed, the encoder's linear layers re-initialised."""
    import numpy as np

    from mmssl.objectives.mae import sincos_position_embedding

    def table_1d(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    def table_2d(dim, rows, cols):
        grid = np.stack(np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32)))
        patches = np.concatenate([table_1d(dim // 2, grid[0]), table_1d(dim // 2, grid[1])], axis=1)
        return np.concatenate([np.zeros([1, dim]), patches])  # the class token's row

    for rows, cols in [(4, 4), (3, 5)]:
        ours = sincos_position_embedding(32, (rows, cols), 1)[0].numpy()
        assert np.abs(ours - table_2d(32, rows, cols)).max() < 1e-6
    raw = image_recipe(tmp_path / "run", "mae", decoder_dim=16, decoder_depth=1, decoder_heads=2)
    raw["model"] = dict(MAE_MODEL)
    obj = get_objective("mae")(parse_recipe(raw))
    obj.setup()
    vit = obj.module.backbone.model
    assert not vit.pos_embed.requires_grad and not obj.module.decoder_pos.requires_grad
    assert torch.equal(vit.pos_embed, sincos_position_embedding(32, (4, 4), 1))
    assert torch.equal(obj.module.decoder_pos, sincos_position_embedding(16, (4, 4), 1))
    assert all(float(block.attn.qkv.bias.abs().max()) == 0 for block in vit.blocks)  # Xavier init, zero biases


def test_mae_refuses_a_backbone_that_is_not_a_vit(tmp_path):
    with pytest.raises(RecipeError, match="needs a timm ViT backbone"):
        _objective(tmp_path, "mae")
