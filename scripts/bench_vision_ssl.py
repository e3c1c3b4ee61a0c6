"""Image SSL (SimCLR, BYOL): mmssl's trainer vs lightly's own PyTorch loop, same model, data, schedule and steps.

Both sides train the same backbone (``mmssl.models.vision.build_backbone`` of the recipe's ``model``: a timm
ResNet-18 with the recipe's widths and the 3x3 small stem) on the same images (the built-in world's shape
task, read by ``mmssl.data.image_sources.load_images``: identical uint8 pixels), for the same number of
optimiser steps at the same batch size, with the same seed, and are evaluated by the same function:

* ``mmssl``   - the real CLI, ``python -m mmssl train configs/<method>_world.yaml key=value ...`` in a
  child process (log every step, no mid-run evaluation, no checkpoints, no random-init floor, no linear
  probe, no gradient clipping: lightly's examples clip nothing). Throughput from the step timestamps
  (``elapsed_s``) of its ``log.jsonl``; kNN top-1 from its ``metrics.json``.
* ``lightly`` - a plain loop written as lightly's ``examples/pytorch/{simclr,byol}.py`` write it: a torch
  ``DataLoader`` (shuffle, drop_last) over the same images as PIL images with ``SimCLRTransform`` /
  ``BYOLTransform`` (``BYOLView1Transform`` + ``BYOLView2Transform``), ``SimCLRProjectionHead`` +
  ``NTXentLoss`` / ``BYOLProjectionHead`` + ``BYOLPredictionHead`` + ``NegativeCosineSimilarity`` with
  ``update_momentum`` and ``cosine_schedule``, each view through the model separately. Where the examples
  leave a choice open it takes mmssl's recipe: AdamW with the recipe's lr, betas, eps and weight decay (not
  on biases and norm layers: lightly's ``get_weight_decay_parameters``), the same cosine schedule with the
  same linear warm-up (transformers' ``get_scheduler``, which mmssl calls), ``--lightly-workers`` loader
  workers (lightly's examples use 8; default here min(8, CPU cores)).

The augmentation settings of the lightly transforms are translated from mmssl's resolved view preset (crop
scale, flip, jitter probability and strengths, grayscale, blur probability and sigmas, solarization), so
blur is off at 32 px on both sides. Head widths come from the recipe; the heads' layer shapes are checked
equal, and the initial weights of backbone and heads are checked identical (same seed, same build order).

kNN: ``mmssl.eval.frozen_backbone.frozen_backbone_metrics``, what mmssl's trainer runs at the end of a run:
``knn_accuracy`` with the recipe's ``knn_k`` and ``knn_temperature`` on the frozen online backbone after precise
BN, mmssl's eval view (``eval_view``: scale and normalise), the train images as the bank (at most
``eval_max_images``, evenly spaced) and the world's eval split as queries. The random-init floor (same initial backbone for both) is printed too.

What still differs, by design (each side as its users run it): mmssl sends both views through the network
in one pass (batch norm sees 2B images), lightly's examples one view at a time; mmssl augments whole uint8
batches with tensor ops in the training process (colour jitter in a fixed order, solarize at 0.5), lightly
per PIL image in loader workers (torchvision's random jitter order, solarize at 128/255); data order and
augmentation draws come from each side's own RNG; mmssl uses torch's fused AdamW, lightly torch's default
(``--lightly-fused-adamw`` levels this); mmssl trains in channels-last memory format, lightly's examples in
the default one (``--lightly-channels-last`` levels this); mmssl's BYOL loss is the paper's (2 - 2cos, summed over the two
directions: 4 + 4x lightly's -cos mean, the same direction; AdamW ignores the scale up to eps); lightly's
``cosine_schedule`` divides by steps - 1 where mmssl's momentum schedule divides by steps.

Each run is its own process; mmssl and lightly alternate, ``--repeats`` times; medians. samples/s = image
pairs per second over the optimiser steps after ``--warmup-steps`` (timed from the end of the last warm-up
step to the end of the last step; data loading, augmentation and the loss included; start-up, image decoding
and the final evaluation not). Peak RSS is the child's ``ru_maxrss`` (from ``os.wait4``: the largest single
process of the run, so lightly's loader workers, separate processes, are not added to its main process).
``--device cuda`` trains in bf16 autocast on both sides and also reports peak GPU memory
(``torch.cuda.max_memory_allocated``).

    flock /tmp/mmssl-bench.lock .venv/bin/python scripts/bench_vision_ssl.py       # estimated 10-15 min, 2 cores
    .venv/bin/python scripts/bench_vision_ssl.py --steps 3 --warmup-steps 1 --scenes 200 --repeats 1 \\
        --batch-size 16 --channels 8,16,32,64                                  # smoke test

The machine is shared: the load average is printed before each run; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = {m: ROOT / "configs" / f"{m}_world.yaml" for m in ("simclr", "byol", "swav", "mae")}
RESNET_METHODS = {"simclr", "byol", "swav"}  # MAE trains its recipe's ViT
TARGET_SPEED = 1.1  # mmssl / lightly samples/s
TARGET_KNN_POINTS = 2.0  # |mmssl - lightly| kNN top-1, in percentage points


# ------------------------------------------------------------------------------------------------------
# the shared settings: one recipe + overrides, read by both sides
# ------------------------------------------------------------------------------------------------------


def overrides(args, run_dir: str, method: str) -> list[str]:
    """Overrides of the method's recipe; the lightly side reads the same recipe with the same overrides."""
    cuda = args.device == "cuda"
    special = {
        "swav": [f"objective.small_crop_size={args.image_size // 2}"],
        "mae": ["objective.norm_pix=false"],  # lightly's example regresses raw (normalised-image) pixels
    }.get(method, [])
    return special + [
        f"output_dir={run_dir}", f"seed={args.seed}",
        f"data.world.num_scenes={args.scenes}", f"data.world.image_size={args.image_size}",
        f"objective.image_size={args.image_size}",
        *([f"model.config.channels=[{args.channels}]"] if method in RESNET_METHODS else []),
        "objective.eval_before=false", "objective.linear_probe=false",
        f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}", "train.max_grad_norm=null",
        "train.log_every=1", "train.eval_every=0", "train.save_every=0", "train.progress=false",
        "train.overwrite=true", f"train.cpu={str(not cuda).lower()}",
        f"train.mixed_precision={'bf16' if cuda else repr('no')}",  # quoted: YAML reads a bare no as false
    ]


def load(job: dict):
    from mmssl.recipes import load_recipe

    return load_recipe(job["recipe"], job["overrides"])


def lr_warmup_steps(train_cfg) -> int:
    """The warm-up of mmssl's trainer (`mmssl.train.loop`): warmup_steps, else warmup_ratio x steps."""
    return train_cfg.warmup_steps or int(train_cfg.warmup_ratio * train_cfg.max_steps)


# ------------------------------------------------------------------------------------------------------
# lightly side: model, transforms and data as lightly's examples build them
# ------------------------------------------------------------------------------------------------------


def lightly_model(method: str, backbone, p):
    """lightly's example modules (examples/pytorch/simclr.py, byol.py), with the recipe's head widths."""
    import copy

    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
    from lightly.models.utils import deactivate_requires_grad
    from torch import nn

    class SimCLR(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(backbone.dim, p.hidden_dim, p.projection_dim,
                                                        num_layers=p.projection_layers)

        def forward(self, x):
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

    class BYOL(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = BYOLProjectionHead(backbone.dim, p.hidden_dim, p.projection_dim)
            self.prediction_head = BYOLPredictionHead(p.projection_dim, p.prediction_hidden_dim, p.projection_dim)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

        def forward(self, x):
            return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    class SwaV(nn.Module):
        def __init__(self):
            from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

            super().__init__()
            self.backbone = backbone
            self.projection_head = SwaVProjectionHead(backbone.dim, p.hidden_dim, p.projection_dim)
            self.prototypes = SwaVPrototypes(p.projection_dim, n_prototypes=p.num_prototypes,
                                             n_steps_frozen_prototypes=p.freeze_prototypes_steps)
            # the paper's prototypes are a bias-free linear map (mmssl's too); lightly's layer adds a bias
            self.prototypes.heads[0].register_parameter("bias", None)

        def forward(self, x, step):
            x = self.projection_head(self.backbone(x).flatten(start_dim=1))
            return self.prototypes(nn.functional.normalize(x, dim=1, p=2), step)

    class MAE(nn.Module):
        """lightly's examples/pytorch/mae.py, with the recipe's decoder and mask ratio."""

        def __init__(self):
            import warnings

            from lightly.models.modules.masked_autoencoder_timm import MAEDecoderTIMM
            from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM

            super().__init__()
            vit = backbone.model
            self.mask_ratio = p.mask_ratio
            self.patch_size = vit.patch_embed.patch_size[0]
            self.backbone = MaskedVisionTransformerTIMM(vit=vit)  # re-initialises the ViT as MAE's code does
            self.sequence_length = self.backbone.sequence_length
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated in lightly 1.6, still its example's decoder
                self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=self.patch_size,
                                              embed_dim=vit.embed_dim, decoder_embed_dim=p.decoder_dim,
                                              decoder_depth=p.decoder_depth, decoder_num_heads=p.decoder_heads,
                                              mlp_ratio=4.0, proj_drop_rate=0.0, attn_drop_rate=0.0)

        def forward(self, images):
            from lightly.models import utils

            idx_keep, idx_mask = utils.random_token_mask(size=(images.shape[0], self.sequence_length),
                                                         mask_ratio=self.mask_ratio, device=images.device)
            encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
            decoded = self.decoder.embed(encoded)
            masked = utils.repeat_token(self.decoder.mask_token, (images.shape[0], self.sequence_length))
            masked = utils.set_at_index(masked, idx_keep, decoded.type_as(masked))
            prediction = self.decoder.predict(utils.get_at_index(self.decoder.decode(masked), idx_mask))
            target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
            return prediction, target

    return {"simclr": SimCLR, "byol": BYOL, "swav": SwaV, "mae": MAE}[method]()


def view_kwargs(view, size: int, mean, std) -> dict:
    """One mmssl view (resolved preset) as the keyword arguments of lightly's view transforms."""
    if not view.random_resized_crop or view.crop_scale[1] != 1.0 or abs(view.crop_ratio[0] - 3 / 4) > 1e-9 \
            or abs(view.crop_ratio[1] - 4 / 3) > 1e-9:
        raise SystemExit("lightly's transforms crop with scale (min_scale, 1) and ratio (3/4, 4/3) only")
    return dict(input_size=size, min_scale=view.crop_scale[0], hf_prob=view.horizontal_flip,
                cj_prob=view.color_jitter, cj_strength=1.0, cj_bright=view.brightness, cj_contrast=view.contrast,
                cj_sat=view.saturation, cj_hue=view.hue, random_gray_scale=view.grayscale,
                gaussian_blur=view.gaussian_blur, sigmas=tuple(view.blur_sigma),
                normalize={"mean": list(mean), "std": list(std)})


def lightly_transform(method: str, p, mean, std):
    from lightly.transforms import (BYOLTransform, BYOLView1Transform, BYOLView2Transform, MAETransform,
                                    SimCLRTransform, SwaVTransform)

    v1, v2 = p.views.resolve(p.image_size)
    kw1, kw2 = view_kwargs(v1, p.image_size, mean, std), view_kwargs(v2, p.image_size, mean, std)
    if method == "mae":
        if v1.color_jitter or v1.grayscale or v1.gaussian_blur or v1.solarize or v1.horizontal_flip != 0.5:
            raise SystemExit("MAETransform crops and flips (p = 0.5) only")
        return MAETransform(input_size=p.image_size, min_scale=v1.crop_scale[0], normalize=kw1["normalize"])
    if method == "swav":
        if kw1 != kw2 or v1.solarize:
            raise SystemExit("SwaVTransform makes all crops alike, without solarization")
        kw = {k: v for k, v in kw1.items() if k not in ("input_size", "min_scale")}
        return SwaVTransform(crop_sizes=(p.image_size, p.small_crop_size), crop_counts=(2, p.small_crops),
                             crop_min_scales=(v1.crop_scale[0], p.small_crop_scale[0]),
                             crop_max_scales=(1.0, p.small_crop_scale[1]), **kw)
    if method == "simclr":
        if kw1 != kw2 or v1.solarize or v2.solarize:
            raise SystemExit("SimCLRTransform makes both views alike, without solarization")
        return SimCLRTransform(**kw1)
    return BYOLTransform(view_1_transform=BYOLView1Transform(**kw1, solarization_prob=v1.solarize),
                         view_2_transform=BYOLView2Transform(**kw2, solarization_prob=v2.solarize))


class PILImages:
    """The decoded world images as a torchvision-style dataset: (transform(PIL image), label), like CIFAR10."""

    def __init__(self, table, transform):
        self.images = table.images.permute(0, 2, 3, 1).contiguous().numpy()  # uint8 [N, H, W, 3]
        self.labels = table.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------
# evaluation: what mmssl's ImageSSL does at the end of a run
# ------------------------------------------------------------------------------------------------------


def knn_top1(backbone, splits, p, device) -> float:
    """mmssl's own evaluation of a frozen backbone (precise BN, eval view, weighted kNN), for both sides."""
    from mmssl.eval.frozen_backbone import ProbeSettings, frozen_backbone_metrics

    settings = ProbeSettings(p.image_size, backbone.mean, backbone.std, p.knn_k, p.knn_temperature, linear_probe=False,
                             max_bank=p.eval_max_images,
                             num_classes=len(splits.class_names) if splits.class_names else None)
    return frozen_backbone_metrics(backbone, splits.train, splits.eval, settings, device)["knn_top1"]


# ------------------------------------------------------------------------------------------------------
# workers (each in its own process)
# ------------------------------------------------------------------------------------------------------


def worker_lightly(job: dict) -> dict:
    import contextlib

    import torch
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
    from lightly.models.utils import get_weight_decay_parameters, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from transformers import get_scheduler

    from mmssl.data.image_sources import load_images
    from mmssl.models.vision import build_backbone

    torch.set_num_threads(job["threads"])
    recipe = load(job)
    p, t, method = recipe.objective, recipe.train, job["method"]
    device = torch.device(job["device"])
    splits = load_images(recipe.data, p.image_size, recipe.seed)
    seed_everything(recipe.seed)
    backbone = build_backbone(recipe.model)
    model = lightly_model(method, backbone, p).to(device)
    fmt = torch.channels_last if job.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=fmt)
    dataset = PILImages(splits.train, lightly_transform(method, p, backbone.mean, backbone.std))
    loader = torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, shuffle=True, drop_last=True,
                                         num_workers=job["workers"])
    online = [getattr(model, name) for name in {"simclr": ["backbone", "projection_head"],
                                                 "byol": ["backbone", "projection_head", "prediction_head"],
                                                 "swav": ["backbone", "projection_head", "prototypes"],
                                                 "mae": ["backbone", "decoder"]}[method]]
    decay, no_decay = get_weight_decay_parameters(online)
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=t.learning_rate,
                                  betas=tuple(t.adam_betas), eps=t.adam_eps, weight_decay=t.weight_decay,
                                  **({"fused": True} if job["fused_adamw"] else {}))
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=lr_warmup_steps(t),
                              num_training_steps=t.max_steps)
    criterion = {"simclr": lambda: NTXentLoss(temperature=p.temperature), "byol": NegativeCosineSimilarity,
                 "swav": lambda: SwaVLoss(temperature=p.temperature, sinkhorn_iterations=p.sinkhorn_iterations,
                                          sinkhorn_epsilon=p.epsilon),
                 "mae": torch.nn.MSELoss}[method]()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    stamps, losses, step = [], [], 0
    started = time.perf_counter()
    while step < t.max_steps:
        for batch in loader:
            views = [x.to(device, memory_format=fmt) for x in batch[0]]
            x0, x1 = (views * 2)[:2]
            with autocast:
                if method == "swav":
                    model.prototypes.normalize()
                    scores = [model(x, step) for x in views]
                    loss = criterion(scores[:2], scores[2:])
                elif method == "mae":
                    loss = criterion(*model(x0))
                elif method == "simclr":
                    loss = criterion(model(x0), model(x1))
                else:
                    momentum = cosine_schedule(step, t.max_steps, p.momentum, p.momentum_final)
                    update_momentum(model.backbone, model.backbone_momentum, m=momentum)
                    update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
                    p0, z0 = model(x0), model.forward_momentum(x0)
                    p1, z1 = model(x1), model.forward_momentum(x1)
                    loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            stamps.append(time.perf_counter())
            # mmssl's BYOL loss is the paper's sum of two 2 - 2cos terms: 4 + 4 x this loss (same gradient
            # direction; AdamW is invariant to the scale up to eps)
            losses.append(4 + 4 * loss.item() if method == "byol" else loss.item())
            if step == t.max_steps:
                break
    knn = knn_top1(backbone, splits, p, device)  # the mmssl Backbone lightly's modules wrap or share
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"stamps": stamps, "losses": losses, "knn_top1": knn, "first_step_s": stamps[0] - started,
            "gpu_peak_mb": gpu}


def worker_floor(job: dict) -> dict:
    """The random-init kNN top-1 of each method's initial backbone (same on both sides), and whether mmssl's
    module (built in the order of `ImageSSL.setup`) and lightly's start from identical weights. MAE: lightly's
    `MaskedVisionTransformerTIMM` re-initialises the ViT with the same recipe as mmssl (MAE's code: Xavier,
    fixed sine-cosine positions) but in another order, so the draws differ (None); the parameter shapes and
    which ones train are compared instead."""
    import torch

    from mmssl.data.image_sources import load_images
    from mmssl.models.vision import build_backbone
    from mmssl.registry import get_objective

    torch.set_num_threads(job["threads"])
    identical, heads, floor, arch = {}, {}, {}, {}
    splits = None
    for method, method_job in job["methods"].items():
        recipe = load(method_job)
        p = recipe.objective
        seed_everything(recipe.seed)
        backbone = build_backbone(recipe.model)  # mmssl: backbone, then images, then heads
        state = torch.random.get_rng_state()
        splits = load_images(recipe.data, p.image_size, recipe.seed)
        loads_consume_rng = not torch.equal(state, torch.random.get_rng_state())
        theirs = get_objective(method)(recipe).build_module(backbone)
        seed_everything(recipe.seed)
        ours = lightly_model(method, build_backbone(recipe.model), p)
        a, b = list(theirs.parameters()), list(ours.parameters())
        identical[method] = None if method == "mae" else (
            not loads_consume_rng and len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)))
        heads[method] = head_shapes(method, theirs) == head_shapes(method, ours)
        floor[method] = knn_top1(theirs.backbone, splits, p, torch.device("cpu"))
        arch[method] = recipe.model.arch
    return {"knn_top1": floor, "identical_init": identical, "same_head_shapes": heads, "arch": arch,
            "train_images": len(splits.train), "eval_images": len(splits.eval)}


def head_shapes(method: str, module) -> list:
    """(layer type, parameter shapes) of every layer of the heads, in order; MAE: the sorted (shape, trains)
    of all parameters, encoder and decoder."""
    from torch import nn

    if method == "mae":
        return sorted((tuple(q.shape), q.requires_grad) for name, q in module.named_parameters()
                      if name != "backbone.mask_token")  # lightly's encoder wrapper has one; MAE leaves it unused
    ours = hasattr(module, "projection")
    names = {"simclr": ["projection"], "byol": ["projection", "prediction"], "swav": ["projection", "prototypes"]}
    out = []
    for name in names[method]:
        if not ours:
            name = {"projection": "projection_head", "prediction": "prediction_head"}.get(name, name)
        for layer in getattr(module, name).modules():
            if isinstance(layer, (nn.Linear, nn.BatchNorm1d, nn.ReLU)):
                out.append((type(layer).__name__, [tuple(q.shape) for q in layer.parameters(recurse=False)]))
    return out


# ------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------


def child_env(threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(cmd: list[str], threads: int, what: str) -> tuple[str, float]:
    """Run `cmd` to completion; (stdout, its peak RSS in MB from the kernel's resource usage of that child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env(threads), cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{stdout[-2000:]}\n{stderr[-5000:]}")
    return stdout, usage.ru_maxrss / 1024


def run_worker(name: str, job: dict, threads: int) -> tuple[dict, float]:
    stdout, rss = run_child([sys.executable, __file__, "--worker", name, "--job", json.dumps(job)], threads, name)
    return json.loads(stdout.strip().splitlines()[-1]), rss


GPU_PEAK = ("import atexit, runpy, sys, torch; "
            "atexit.register(lambda: print('GPU_PEAK_MB', torch.cuda.max_memory_allocated() / 2**20)); "
            "sys.argv[0] = 'mmssl'; runpy.run_module('mmssl', run_name='__main__')")


def run_mmssl(job: dict, run_dir: Path) -> dict:
    """`mmssl train` in a child process; timestamps and losses from log.jsonl, kNN from metrics.json."""
    cli = ["-m", "mmssl"] if job["device"] == "cpu" else ["-c", GPU_PEAK]  # cuda: report peak GPU memory
    stdout, rss = run_child([sys.executable, *cli, "train", job["recipe"], *job["overrides"]], job["threads"], "mmssl")
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["event"] == "train"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    gpu = [float(line.split()[1]) for line in stdout.splitlines() if line.startswith("GPU_PEAK_MB")]
    return {"stamps": [r["elapsed_s"] for r in train], "losses": [r["loss"] for r in train],
            "knn_top1": metrics["eval"]["knn_top1"], "first_step_s": train[0]["elapsed_s"],
            "gpu_peak_mb": gpu[-1] if gpu else None, "peak_rss_mb": rss}


def run_lightly(job: dict) -> dict:
    result, rss = run_worker("lightly", job, job["threads"])
    return {**result, "peak_rss_mb": rss}


def summarise(result: dict, steps: int, warm: int, batch: int) -> dict:
    stamps = result["stamps"]
    if len(stamps) != steps:
        raise SystemExit(f"expected {steps} optimiser steps, saw {len(stamps)}")
    result["samples_per_s"] = (steps - warm) * batch / (stamps[-1] - stamps[warm - 1])
    result["final_loss"] = statistics.fmean(result["losses"][-5:])
    return result


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def print_table(results: dict, cuda: bool) -> dict:
    summary = {}
    gpu = " GPU peak MB |" if cuda else ""
    print(f"\n| method | side | samples/s | peak RSS MB |{gpu} kNN top-1 | final loss (last 5) |")
    print("|---|---|---|---|" + ("---|" if cuda else "") + "---|---|")
    for method, sides in results.items():
        med = {side: {k: median(runs, k) for k in ("samples_per_s", "peak_rss_mb", "gpu_peak_mb", "knn_top1",
                                                  "final_loss")} for side, runs in sides.items()}
        for side, m in med.items():
            extra = f" {m['gpu_peak_mb']:.0f} |" if cuda else ""
            print(f"| {method} | {side} | {m['samples_per_s']:.1f} | {m['peak_rss_mb']:.0f} |{extra} "
                  f"{100 * m['knn_top1']:.1f}% | {m['final_loss']:.4f} |")
        speed = med["mmssl"]["samples_per_s"] / med["lightly"]["samples_per_s"]
        rss = med["mmssl"]["peak_rss_mb"] / med["lightly"]["peak_rss_mb"]
        diff = 100 * (med["mmssl"]["knn_top1"] - med["lightly"]["knn_top1"])
        summary[method] = {"mmssl": med["mmssl"], "lightly": med["lightly"], "speed_ratio": round(speed, 3),
                           "rss_ratio": round(rss, 3), "knn_diff_points": round(diff, 2),
                           "speed_target_met": speed >= TARGET_SPEED, "knn_target_met": abs(diff) <= TARGET_KNN_POINTS}
    print()
    for method, s in summary.items():
        print(f"{method}: mmssl/lightly samples/s {s['speed_ratio']:.2f}x (target >= {TARGET_SPEED}x: "
              f"{'met' if s['speed_target_met'] else 'NOT met'}); peak RSS {s['rss_ratio']:.2f}x; kNN top-1 "
              f"mmssl - lightly {s['knn_diff_points']:+.1f} points (target within {TARGET_KNN_POINTS:g}: "
              f"{'met' if s['knn_target_met'] else 'NOT met'})")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="simclr,byol")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per run (warm-up steps included)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps at the start of each run")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (each gives two views)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", default="32,64,128,256", help="ResNet stage widths (the recipes')")
    parser.add_argument("--scenes", type=int, default=4000, help="world train images (eval: a fifth as many)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--lightly-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="lightly DataLoader workers (its examples use 8; default min(8, CPU cores))")
    parser.add_argument("--lightly-fused-adamw", action="store_true",
                        help="lightly side with torch's fused AdamW (mmssl's); default: torch's default AdamW")
    parser.add_argument("--lightly-channels-last", action="store_true",
                        help="lightly side in channels-last memory format (mmssl's default); default: as lightly's "
                             "examples (contiguous)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", choices=["lightly", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        job = json.loads(args.job)
        print(json.dumps(worker_lightly(job) if args.worker == "lightly" else worker_floor(job)))
        return
    if not 1 <= args.warmup_steps < args.steps:
        raise SystemExit("--warmup-steps must be at least 1 and below --steps")
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(RECIPES))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {sorted(RECIPES)}")

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        base = {"threads": args.threads, "device": args.device, "workers": args.lightly_workers,
                "fused_adamw": args.lightly_fused_adamw, "channels_last": args.lightly_channels_last}
        jobs = {m: {**base, "method": m, "recipe": str(RECIPES[m]),
                    "overrides": overrides(args, f"{tmp}/unused", m)} for m in methods}
        floor, _ = run_worker("floor", {"threads": args.threads, "methods": jobs}, args.threads)
        print(f"data: world shape task, {floor['train_images']} train / {floor['eval_images']} eval images, "
              f"{args.image_size} px; {floor['arch']} (ResNets: widths [{args.channels}], small stem); "
              f"batch {args.batch_size}; "
              f"{args.steps} steps ({args.warmup_steps} untimed); {args.threads} threads; {args.device}; "
              f"lightly DataLoader workers {args.lightly_workers}; AdamW on the lightly side: "
              f"{'fused' if args.lightly_fused_adamw else 'torch default'}, "
              f"{'channels-last' if args.lightly_channels_last else 'contiguous'}; repeats {args.repeats}")
        floors = ", ".join(f"{m} {100 * v:.1f}%" for m, v in floor["knn_top1"].items())
        print(f"random-init kNN top-1: {floors}; initial weights identical on both sides: "
              f"{floor['identical_init']}; head layer shapes equal: {floor['same_head_shapes']}", flush=True)

        results: dict[str, dict[str, list[dict]]] = {m: {"mmssl": [], "lightly": []} for m in methods}
        for repeat in range(args.repeats):
            for method in methods:
                for side in ("mmssl", "lightly"):
                    load_avg = os.getloadavg()[0]
                    if side == "mmssl":
                        run_dir = Path(tmp) / f"mmssl-{method}-{repeat}"
                        r = run_mmssl({**jobs[method], "overrides": overrides(args, str(run_dir), method)}, run_dir)
                    else:
                        r = run_lightly(jobs[method])
                    r = summarise(r, args.steps, args.warmup_steps, args.batch_size)
                    results[method][side].append(r)
                    gpu = f"  GPU peak {r['gpu_peak_mb']:.0f} MB" if r.get("gpu_peak_mb") is not None else ""
                    print(f"  repeat {repeat + 1} {method:6s} {side:7s}: {r['samples_per_s']:7.1f} samples/s  "
                          f"kNN top-1 {100 * r['knn_top1']:5.1f}%  loss last-5 {r['final_loss']:.4f}  peak RSS "
                          f"{r['peak_rss_mb']:6.0f} MB{gpu}  first step {r['first_step_s']:5.1f}s  "
                          f"(load avg before {load_avg:.2f})", flush=True)
    summary = print_table(results, args.device == "cuda")
    settings = {k: getattr(args, k) for k in ("steps", "warmup_steps", "batch_size", "image_size", "channels",
                                              "scenes", "threads", "lightly_workers", "lightly_fused_adamw",
                                              "lightly_channels_last", "repeats", "seed", "device")}
    print("SUMMARY " + json.dumps({"settings": settings, "random_init_knn_top1": floor["knn_top1"], **summary}))


if __name__ == "__main__":
    main()
