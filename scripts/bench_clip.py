"""Benchmark: mmssl's CLIP training vs open_clip's own training loop, same model, data, batch and seed.

Both sides start from the same initial weights (one open_clip model saved in ``local-dir`` format), read
the same CSV of PNG files (world images, 64 px, first caption of each), use AdamW with the same
hyperparameters, a cosine schedule, fp32, batch 64, and open_clip's default training crop
(RandomResizedCrop scale 0.9-1.0):

* open_clip: ``open_clip_train.data.get_data`` (its CsvDataset + DataLoader, 1 worker as in PERF.md),
  ``open_clip.create_loss`` (ClipLoss) and ``open_clip_train.train.train_one_epoch``;
* mmssl: ``mmssl.train.loop.train`` on the same CSV (``data.source=files``), objective ``clip``.

Each side runs in its own subprocess, alternating, ``--repeats`` times. Throughput is measured between
optimiser steps after ``--warmup`` steps (so start-up and the one-off image decoding of mmssl are reported
separately, as ``startup_s``). Losses are the training losses of the last 5 steps (same seed; data order and
crops are drawn by each library's own RNG, so they agree statistically, not bit for bit).

    flock /tmp/mmssl-bench.lock .venv/bin/python scripts/bench_clip.py            # about 3-4 minutes
    python scripts/bench_clip.py --device cuda --batch 256 --workers 8            # bf16 autocast on both sides
    .venv/bin/python scripts/bench_clip.py --steps 20 --repeats 1                  # quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_JSON = ROOT / "configs" / "clip_models" / "mmssl-vit-bench.json"
HYPER = {"lr": 5e-4, "wd": 0.2, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "warmup": 5}


# ------------------------------------------------------------------------------------------------------
# preparation (parent)
# ------------------------------------------------------------------------------------------------------


def prepare(workdir: Path, examples: int, image_size: int) -> tuple[Path, Path]:
    """World images as PNG files + a CSV (filepath, title); the shared initial model in local-dir format."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from mmssl.data.world import world_columns
    from mmssl.recipes import WorldConfig

    images = workdir / "images"
    images.mkdir(parents=True, exist_ok=True)
    cols = world_columns(WorldConfig(num_scenes=examples, image_size=image_size), "image_text")
    table = workdir / "train.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        for i, (image, caps) in enumerate(zip(cols["image"], cols["captions"])):
            path = images / f"{i:06d}.png"
            image.save(path)
            writer.writerow([str(path), caps[0]])
    config = json.loads(MODEL_JSON.read_text())
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**config)
    init = workdir / "init"
    init.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(init / "open_clip_model.safetensors"))
    (init / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    return table, init


# ------------------------------------------------------------------------------------------------------
# workers (one subprocess per measurement)
# ------------------------------------------------------------------------------------------------------


def _timed_steps(optimizer_cls, stamps: list[float]) -> None:
    original = optimizer_cls.step

    import torch

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the step's kernels are done before the clock reads
        stamps.append(time.perf_counter())
        return out

    optimizer_cls.step = step


def worker_open_clip(job: dict) -> dict:
    import logging

    import torch
    from open_clip import create_loss, create_model_and_transforms, get_tokenizer
    from open_clip_train.data import get_data
    from open_clip_train.params import parse_args
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    logging.disable(logging.INFO)
    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    name = f"local-dir:{job['init']}"
    args = parse_args([
        "--train-data", job["csv"], "--dataset-type", "csv", "--csv-separator", ",", "--csv-img-key", "filepath",
        "--csv-caption-key", "title", "--batch-size", str(job["batch"]), "--workers", str(job["workers"]),
        "--lr", str(HYPER["lr"]), "--wd", str(HYPER["wd"]), "--beta1", str(HYPER["beta1"]),
        "--beta2", str(HYPER["beta2"]), "--eps", str(HYPER["eps"]), "--warmup", str(HYPER["warmup"]),
        "--epochs", "1", "--precision", "amp_bf16" if job["device"] == "cuda" else "fp32", "--model", name,
        "--seed", "0", "--log-every-n-steps", "1000000",
    ])
    args.device, args.distributed, args.world_size, args.rank, args.local_rank = job["device"], False, 1, 0, 0
    args.distill, args.wandb, args.tensorboard, args.save_logs = False, False, False, False  # as main() derives them
    torch.manual_seed(args.seed)
    model, preprocess_train, preprocess_val = create_model_and_transforms(name, precision="fp32", device=job["device"],
                                                                          output_dict=True)
    data = get_data(args, (preprocess_train, preprocess_val), epoch=0, tokenizer=get_tokenizer(name))
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    params = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in params if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
         {"params": [p for n, p in params if not exclude(n, p) and p.requires_grad], "weight_decay": args.wd}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
    )
    total = data["train"].dataloader.num_batches
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, total)
    clip_loss = create_loss(args)
    losses: list[float] = []

    def loss(**kwargs):
        out = clip_loss(**kwargs)
        losses.append(float(sum(v.detach() for v in out.values())))
        return out

    stamps: list[float] = []
    _timed_steps(torch.optim.AdamW, stamps)
    train_one_epoch(model, data, loss, 0, optimizer, None, scheduler, None, args, tb_writer=None)
    return {"stamps": stamps, "losses": losses, "started": started}


def worker_mmssl(job: dict) -> dict:
    import torch

    from mmssl.recipes import parse_recipe
    from mmssl.train.loop import train

    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    out = Path(job["workdir"]) / f"mmssl-run-{os.getpid()}"
    raw = {
        "name": "bench-clip",
        "output_dir": str(out),
        "seed": 0,
        "data": {"source": "files", "path": job["csv"], "eval_fraction": 0.0},
        "model": {"pretrained": job["init"]},
        "objective": {"name": "clip", "caption_sampling": "first"},
        "train": {
            "batch_size": job["batch"], "learning_rate": HYPER["lr"], "weight_decay": HYPER["wd"],
            "adam_betas": [HYPER["beta1"], HYPER["beta2"]], "adam_eps": HYPER["eps"], "scheduler": "cosine",
            "warmup_steps": HYPER["warmup"], "max_steps": job["total_steps"], "max_grad_norm": None,
            "mixed_precision": "bf16" if job["device"] == "cuda" else "no", "log_every": 1, "progress": False,
            "cpu": job["device"] == "cpu", "overwrite": True,
        },
    }
    stamps: list[float] = []
    _timed_steps(torch.optim.AdamW, stamps)
    train(parse_recipe(raw))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    return {"stamps": stamps, "losses": losses, "started": started}


# ------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------


def run_worker(impl: str, job: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = str(job["threads"])
    proc = subprocess.run([sys.executable, __file__, "--worker", impl, "--job", json.dumps(job)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    stamps = result["stamps"]
    warm = job["warmup_steps"]
    if len(stamps) != job["total_steps"]:
        raise SystemExit(f"{impl}: expected {job['total_steps']} optimiser steps, saw {len(stamps)}")
    measured = len(stamps) - warm
    result["samples_per_s"] = measured * job["batch"] / (stamps[-1] - stamps[warm - 1])
    result["startup_s"] = stamps[0] - result["started"]
    result["final_loss"] = statistics.fmean(result["losses"][-5:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: bf16 autocast on both sides")
    parser.add_argument("--steps", type=int, default=40, help="measured steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per implementation, alternating")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="open_clip DataLoader workers")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", choices=["open_clip", "mmssl"], help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        job = json.loads(args.job)
        result = (worker_open_clip if args.worker == "open_clip" else worker_mmssl)(job)
        if job["device"] == "cuda":
            import torch

            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(result))
        return

    total = args.steps + args.warmup
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        table, init = prepare(work, total * args.batch, args.image_size)
        print(f"data: {total * args.batch} PNG files ({args.image_size} px), model {MODEL_JSON.name}, batch {args.batch}, "
              f"{total} steps ({args.warmup} warm-up), {args.threads} threads; prepared in {time.perf_counter() - t0:.1f}s",
              flush=True)
        job = {"csv": str(table), "init": str(init), "batch": args.batch, "total_steps": total,
               "warmup_steps": args.warmup, "threads": args.threads, "workers": args.workers, "workdir": str(work),
               "device": args.device}
        results: dict[str, list[dict]] = {"open_clip": [], "mmssl": []}
        for repeat in range(args.repeats):
            order = ["open_clip", "mmssl"] if repeat % 2 == 0 else ["mmssl", "open_clip"]
            for impl in order:
                r = run_worker(impl, job)
                results[impl].append(r)
                gpu = f"  peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""
                print(f"  repeat {repeat + 1} {impl:9s}: {r['samples_per_s']:7.1f} samples/s  startup {r['startup_s']:5.1f}s  "
                      f"loss first {r['losses'][0]:.4f} last-5 mean {r['final_loss']:.4f}{gpu}", flush=True)
    speed = {k: statistics.median(r["samples_per_s"] for r in v) for k, v in results.items()}
    print(f"open_clip train_one_epoch (CsvDataset, {args.workers} worker): {speed['open_clip']:.1f} samples/s (median)")
    print(f"mmssl train (clip objective)                    : {speed['mmssl']:.1f} samples/s (median)")
    paired = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(results["mmssl"], results["open_clip"])]
    print(f"ratio mmssl / open_clip: {speed['mmssl'] / speed['open_clip']:.2f}x "
          f"(per repeat {min(paired):.2f}-{max(paired):.2f}x)")
    for impl, runs in results.items():
        losses = [r["final_loss"] for r in runs]
        print(f"final loss after {total} steps, {impl}: " + ", ".join(f"{x:.4f}" for x in losses))


if __name__ == "__main__":
    main()
