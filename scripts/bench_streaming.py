"""Benchmark: streamed data against the whole-data path and against open_clip's WebDataset loader.

Synthetic WebDataset shards of 64 px JPEG + caption (1,000 samples a shard, a sizes.json beside them) at each
``--sizes`` N, generated once into ``--work``. Parts (``--parts``):

* ``start``: time to the 3rd training step and peak memory (main process + loader workers, polled every
  20 ms) of ``mmssl train`` for CLIP (mmssl-vit-tiny) and SimCLR (tiny ResNet-18) streaming the shards, the
  same recipe with ``data.streaming=false`` (reads and decodes everything first), and open_clip's
  ``open_clip_train.data.get_wds_dataset`` delivering its first 3 batches (1 worker). Each run is its own
  process; runs alternate; medians of ``--repeats``.
* ``loader``: batches/s of mmssl's loader (decode + resize + tokenise in workers; uint8 images) and of
  open_clip's (decode + its training transform + tokenise; float images), same shards, batch, worker count,
  in alternating processes.
* ``clip``: CLIP training steps/s, mmssl (``mmssl train``, streamed) against open_clip's model + ``ClipLoss`` +
  AdamW fed by ``get_wds_dataset``, same model config, batch, fp32, worker count.
* ``mlm``: a generated text file of ``--text-mb`` MB: time to the 2nd step of streamed MLM, and tokens/s of
  streamed against whole-data (pre-tokenised) MLM on a 10 MB file.

    flock /tmp/mmssl-bench.lock .venv/bin/python scripts/bench_streaming.py --sizes 1000,10000,100000
    .venv/bin/python scripts/bench_streaming.py --parts loader,clip --sizes 10000 --repeats 3

Needs the bench extra (webdataset 0.2.86: open_clip_train's loader breaks on webdataset 1.x).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 20)}
SHAPES = ("square", "circle", "bar", "cross")
PER_SHARD = 1000


# ------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------


def _image(rng: random.Random) -> tuple[bytes, str]:
    from PIL import Image, ImageDraw

    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    image = Image.new("RGB", (64, 64), tuple(rng.randrange(200, 256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    x, y, r = rng.randrange(12, 52), rng.randrange(12, 52), rng.randrange(6, 12)
    box = (x - r, y - r, x + r, y + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "bar":
        draw.rectangle((x - r, y - 2, x + r, y + 2), fill=COLOURS[colour])
    else:
        draw.rectangle((x - r, y - 2, x + r, y + 2), fill=COLOURS[colour])
        draw.rectangle((x - 2, y - r, x + 2, y + r), fill=COLOURS[colour])
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue(), f"a {colour} {shape}"


def make_shards(work: Path, n: int) -> Path:
    """N samples as ceil(N / 1000) shards ``shard-XXXXX.tar`` (``KEY.jpg``, ``KEY.txt``) + sizes.json."""
    out = work / f"shards-{n}"
    if (out / "sizes.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    sizes = {}
    for shard in range((n + PER_SHARD - 1) // PER_SHARD):
        count = min(PER_SHARD, n - shard * PER_SHARD)
        name = f"shard-{shard:05d}.tar"
        with tarfile.open(out / name, "w") as tar:
            for i in range(count):
                data, caption = _image(rng)
                for ext, payload in (("jpg", data), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{shard:05d}{i:04d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        sizes[name] = count
    (out / "sizes.json").write_text(json.dumps(sizes))
    return out


def shard_pattern(shards: Path) -> str:
    count = len(json.loads((shards / "sizes.json").read_text()))
    return str(shards / f"shard-{{00000..{count - 1:05d}}}.tar")


def make_text(work: Path, megabytes: int) -> Path:
    """A text file of `megabytes` MB: lines of 8-30 words drawn from a 5,000-word vocabulary."""
    path = work / f"text-{megabytes}mb.txt"
    if path.is_file():
        return path
    rng = random.Random(megabytes)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = ["".join(rng.choice(letters[: 8 + i % 18]) for _ in range(rng.randrange(2, 9))) for i in range(5000)]
    target = megabytes * 1_000_000
    written = 0
    with open(path, "w") as handle:
        while written < target:
            block = "\n".join(" ".join(rng.choices(vocab, k=rng.randrange(8, 30))) for _ in range(2000)) + "\n"
            handle.write(block)
            written += len(block)
    return path


# ------------------------------------------------------------------------------------------------------
# measuring a process
# ------------------------------------------------------------------------------------------------------


def run_measured(cmd: list[str], done: callable, timeout: float = 900) -> tuple[float, float]:
    """Run `cmd`; return (seconds until `done()` first holds, peak RSS in MB of its process tree until then)."""
    import psutil

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    parent = psutil.Process(proc.pid)
    try:
        while True:
            if done():
                elapsed = time.perf_counter() - start
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd[:6])} ended before it was done: {proc.stderr.read()[-2000:]}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"{' '.join(cmd[:6])} timed out")
            try:
                procs = [parent] + parent.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.02)
    finally:  # the loader workers too: an orphaned worker would keep reading into the next measurement
        try:
            children = parent.children(recursive=True)
        except psutil.Error:
            children = []
        for p in [parent, *children]:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait()
        psutil.wait_procs(children, timeout=10)
    return elapsed, peak


def logged_step(log: Path, step: int) -> callable:
    def done() -> bool:
        if not log.is_file():
            return False
        return any(f'"step": {step},' in line and '"event": "train"' in line for line in log.read_text().splitlines())
    return done


def train_cmd(recipe: str, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mmssl", "train", recipe, f"output_dir={out}", "train.overwrite=true",
            "train.progress=false", "train.eval_every=0", "train.save_every=0", *overrides]


DEVICE = "cpu"  # --device


def image_overrides(method: str, shards: Path, streaming: bool, steps: int, workers: int, log_every: int) -> list[str]:
    common = [f"data.source=files", f"data.path={shard_pattern(shards)}", f"data.streaming={str(streaming).lower()}",
              "data.eval_fraction=0", f"train.max_steps={steps}", f"train.log_every={log_every}",
              f"train.num_workers={workers}", "train.batch_size=64", f"train.cpu={str(DEVICE == 'cpu').lower()}",
              'train.mixed_precision="no"', "train.warmup_steps=0",
              "train.warmup_ratio=0"]
    if method == "simclr":
        return common + ["objective.eval_before=false", "objective.linear_probe=false"]
    return common


RECIPES = {"clip": "configs/clip_world.yaml", "simclr": "configs/simclr_world.yaml"}


def start_mmssl(method: str, shards: Path, streaming: bool, work: Path) -> tuple[float, float]:
    out = work / f"run-{method}-{streaming}"
    cmd = train_cmd(RECIPES[method], out, *image_overrides(method, shards, streaming, 3, 1, 3))
    log = out / "log.jsonl"
    if log.exists():
        log.unlink()
    return run_measured(cmd, logged_step(log, 3))


OPEN_CLIP_FIRST = r"""
import sys, time, argparse
import open_clip
from open_clip_train.data import get_wds_dataset
pattern, batches, workers, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
open_clip.add_model_config(sys.argv[5])
model, preprocess, _ = open_clip.create_model_and_transforms("mmssl-vit-tiny")
tokenizer = open_clip.get_tokenizer("mmssl-vit-tiny")
args = argparse.Namespace(train_data=pattern, train_num_samples=None, dataset_resampled=False, batch_size=64,
                          workers=workers, world_size=1, seed=0, train_data_upsampling_factors=None)
loader = get_wds_dataset(args, preprocess, True, tokenizer=tokenizer).dataloader
start = time.perf_counter()
for i, (images, texts) in enumerate(loader):
    if i + 1 == batches:
        break
open(out, "w").write(str(time.perf_counter() - start))
"""


def start_open_clip(shards: Path, work: Path) -> tuple[float, float]:
    marker = work / "open_clip_first.txt"
    if marker.exists():
        marker.unlink()
    cmd = [sys.executable, "-c", OPEN_CLIP_FIRST, shard_pattern(shards), "3", "1", str(marker),
           str(ROOT / "configs" / "clip_models" / "mmssl-vit-tiny.json")]
    return run_measured(cmd, marker.is_file)


# ------------------------------------------------------------------------------------------------------
# loader and training throughput (each in its own process)
# ------------------------------------------------------------------------------------------------------


LOADER = r"""
import sys, time, json, argparse
side, pattern, batches, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import open_clip
open_clip.add_model_config(sys.argv[5])
tokenizer = open_clip.get_tokenizer("mmssl-vit-tiny")
if side == "open_clip":
    from open_clip_train.data import get_wds_dataset
    _, preprocess, _ = open_clip.create_model_and_transforms("mmssl-vit-tiny")
    args = argparse.Namespace(train_data=pattern, train_num_samples=None, dataset_resampled=False, batch_size=64,
                              workers=workers, world_size=1, seed=0, train_data_upsampling_factors=None)
    loader = get_wds_dataset(args, preprocess, True, tokenizer=tokenizer).dataloader
else:
    from mmssl.config import DataConfig
    from mmssl.data.stream_sources import ImageTransform, collate_images, data_sources
    from mmssl.data.streaming import SampleStream, make_loader
    sources = data_sources(DataConfig(source="files", path=pattern, streaming=True), "image_text")
    stream = SampleStream(sources, ImageTransform(48, {}, tokenizer), seed=0, shuffle_buffer=1000)
    loader = make_loader(stream, 64, collate_images, workers)
it = iter(loader)
for _ in range(5):
    next(it)
start = time.perf_counter()
for _ in range(batches):
    next(it)
print(json.dumps({"batches_per_s": batches / (time.perf_counter() - start)}))
"""

CLIP_LOOP = r"""
import sys, time, json, argparse
import torch, open_clip
from open_clip_train.data import get_wds_dataset
pattern, steps, workers, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
torch.manual_seed(0)
open_clip.add_model_config(sys.argv[4])
model, preprocess, _ = open_clip.create_model_and_transforms("mmssl-vit-tiny")
model = model.to(device)
tokenizer = open_clip.get_tokenizer("mmssl-vit-tiny")
args = argparse.Namespace(train_data=pattern, train_num_samples=None, dataset_resampled=False, batch_size=64,
                          workers=workers, world_size=1, seed=0, train_data_upsampling_factors=None)
loader = get_wds_dataset(args, preprocess, True, tokenizer=tokenizer).dataloader
loss_fn = open_clip.ClipLoss()
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
model.train()
it = iter(loader)
def step():
    images, texts = next(it)
    images, texts = images.to(device, non_blocking=True), texts.to(device, non_blocking=True)
    image_features, text_features, logit_scale = model(images, texts)[:3]
    loss = loss_fn(image_features, text_features, logit_scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(5):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"samples_per_s": steps * 64 / (time.perf_counter() - start)}))
"""


def last_json(cmd: list[str]) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def logged_rate(cmd: list[str], out: Path, key: str) -> float:
    """Run `mmssl train` (`cmd`, into `out`) and average `key` over its logged windows but the first (start-up)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    rates = [e[key] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "train"]
    return statistics.mean(rates[1:])


def mmssl_clip_rate(shards: Path, steps: int, workers: int, work: Path) -> float:
    out = work / "run-clip-rate"
    cmd = train_cmd(RECIPES["clip"], out, *image_overrides("clip", shards, True, steps + 5, workers, 5),
                    "train.scheduler=constant", "train.warmup_steps=0")
    return logged_rate(cmd, out, "examples_per_s")


def compare(rates: dict[str, list[float]], unit: str) -> dict:
    """Medians of each side's repeats, every repeat, and the first side's median over the second's."""
    med = {k: statistics.median(v) for k, v in rates.items()}
    first, second = list(rates)
    return {unit: {k: round(v, 2) for k, v in med.items()}, "ratio": round(med[first] / med[second], 3),
            "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()}}


# ------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mmssl-bench-streaming"))
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--parts", default="start,loader,clip,mlm")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="loader workers for loader/clip parts")
    parser.add_argument("--batches", type=int, default=60, help="timed batches / steps for loader and clip parts")
    parser.add_argument("--whole", action="store_true", help="also time the whole-data path in 'start'")
    parser.add_argument("--text-mb", type=int, default=1000)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the training runs (fp32)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    parts = set(args.parts.split(","))
    model_json = str(ROOT / "configs" / "clip_models" / "mmssl-vit-tiny.json")
    report: dict = {"machine": f"{os.cpu_count()} cores", "device": DEVICE, "sizes": sizes}

    t0 = time.perf_counter()
    shards = {n: make_shards(work, n) for n in sizes}
    print(f"shards ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    if "start" in parts:
        rows = {}
        for n in sizes:
            runs: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.repeats):
                for name, fn in (("clip_stream", lambda: start_mmssl("clip", shards[n], True, work)),
                                 ("simclr_stream", lambda: start_mmssl("simclr", shards[n], True, work)),
                                 ("open_clip_wds", lambda: start_open_clip(shards[n], work)),
                                 *((("clip_whole", lambda: start_mmssl("clip", shards[n], False, work)),)
                                   if args.whole else ())):
                    runs.setdefault(name, []).append(fn())
            rows[n] = {name: {"seconds": round(statistics.median(r[0] for r in rs), 2),
                              "peak_mb": round(statistics.median(r[1] for r in rs))} for name, rs in runs.items()}
            print(json.dumps({"n": n, **rows[n]}), file=sys.stderr)
        report["start"] = rows
        first, last = min(sizes), max(sizes)
        report["start_growth"] = {name: {"time_ratio": round(rows[last][name]["seconds"] / rows[first][name]["seconds"], 2),
                                         "memory_ratio": round(rows[last][name]["peak_mb"] / rows[first][name]["peak_mb"], 2)}
                                  for name in rows[first]}

    pattern = shard_pattern(shards[max(sizes)])
    if "loader" in parts:
        rates: dict[str, list[float]] = {"mmssl": [], "open_clip": []}
        for _ in range(args.repeats):
            for side in ("mmssl", "open_clip"):
                rates[side].append(last_json([sys.executable, "-c", LOADER, side, pattern, str(args.batches),
                                              str(args.workers), model_json])["batches_per_s"])
        report["loader"] = {"workers": args.workers, **compare(rates, "batches_per_s")}
        print(json.dumps(report["loader"]), file=sys.stderr)

    if "clip" in parts:
        rates = {"mmssl": [], "open_clip": []}
        for _ in range(args.repeats):
            rates["mmssl"].append(mmssl_clip_rate(shards[max(sizes)], args.batches, args.workers, work))
            rates["open_clip"].append(last_json([sys.executable, "-c", CLIP_LOOP, pattern, str(args.batches),
                                                 str(args.workers), model_json, DEVICE])["samples_per_s"])
        report["clip"] = {"workers": args.workers, **compare(rates, "samples_per_s")}
        print(json.dumps(report["clip"]), file=sys.stderr)

    if "mlm" in parts:
        big = make_text(work, args.text_mb)
        small = make_text(work, 10)
        mlm = {}
        starts = []
        for _ in range(args.repeats):
            out = work / "run-mlm-big"
            (out / "log.jsonl").unlink(missing_ok=True)
            starts.append(run_measured(train_cmd("configs/mlm_world.yaml", out, "data.source=files", f"data.path={big}",
                                                 "data.streaming=true", "train.max_steps=2", "train.log_every=2",
                                                 f"train.cpu={str(DEVICE == 'cpu').lower()}",
                                                 "tokenizer.train_samples=20000"),
                                       logged_step(out / "log.jsonl", 2)))
        mlm["start_1gb"] = {"seconds": round(statistics.median(s[0] for s in starts), 1),
                            "peak_mb": round(statistics.median(s[1] for s in starts)), "text_mb": args.text_mb}
        rates = {"stream": [], "whole": []}
        for _ in range(args.repeats):
            for side in ("stream", "whole"):
                out = work / f"run-mlm-{side}"
                cmd = train_cmd("configs/mlm_world.yaml", out, "data.source=files", f"data.path={small}",
                                f"data.streaming={'true' if side == 'stream' else 'false'}", "data.eval_fraction=0",
                                f"train.cpu={str(DEVICE == 'cpu').lower()}",
                                "train.max_steps=60", "train.log_every=10", "tokenizer.train_samples=20000")
                rates[side].append(logged_rate(cmd, out, "tokens_per_s"))
        mlm.update(compare(rates, "tokens_per_s"))
        report["mlm"] = mlm
        print(json.dumps(mlm), file=sys.stderr)

    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
