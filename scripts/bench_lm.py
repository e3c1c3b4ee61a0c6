"""Benchmark: mmssl vs the transformers Trainer + DataCollatorForLanguageModeling on masked and causal LM.

Same model, the same packed blocks of the same text, AdamW, linear schedule, gradient clipping 1.0, vocabulary
30,522. On the CPU (default): BERT / GPT-2 of hidden 256, 4 layers, 4 heads, batch 32 x 128 tokens, fp32, 2 torch
threads. With ``--device cuda``: BERT-base / GPT-2-small shapes (768 x 12 layers), batch 64 x 256 tokens, bf16 on
both sides, peak GPU memory printed. Each run is its own subprocess (so peak memory is per run); runs alternate
between the two implementations. Throughput is measured over the steps after `--warmup` steps; the ratio is
reported as the ratio of medians and the range of per-repeat ratios.

    python scripts/bench_lm.py                      # both objectives, 2 repeats
    python scripts/bench_lm.py --objectives mlm --steps 20 --repeats 3
    python scripts/bench_lm.py --device cuda --steps 30 --warmup 5
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VOCAB = 30522
SHAPES = {  # device -> (batch, tokens per block, BERT config, GPT-2 config)
    "cpu": (32, 128, {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
                      "max_position_embeddings": 512, "vocab_size": VOCAB},
            {"n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 512, "vocab_size": VOCAB}),
    "cuda": (64, 256, {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "intermediate_size": 3072, "max_position_embeddings": 512, "vocab_size": VOCAB},
             {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": VOCAB}),
}
BATCH, LENGTH, BERT, GPT2 = SHAPES["cpu"]


def use_shapes(device: str) -> None:
    global BATCH, LENGTH, BERT, GPT2
    BATCH, LENGTH, BERT, GPT2 = SHAPES[device]


def prepare(workdir: Path, num_scenes: int) -> None:
    """Corpus (the built-in world's captions), a tokenizer per objective, and the packed blocks."""
    from mmssl.data.text_blocks import pack
    from mmssl.data.tokenizers import train_byte_bpe, train_wordpiece
    from mmssl.data.world import world_columns
    from mmssl.recipes import WorldConfig
    import datasets

    texts = world_columns(WorldConfig(num_scenes=num_scenes), "text")["text"]
    (workdir / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    ds = datasets.Dataset.from_dict({"text": texts})
    for objective, tokenizer in (("mlm", train_wordpiece([texts], 4000, 2, True)), ("clm", train_byte_bpe([texts], 4000, 2))):
        tokenizer.save_pretrained(workdir / f"tok-{objective}")
        blocks = pack(ds, tokenizer, LENGTH, add_special_tokens=objective == "mlm", append_eos=objective == "clm")
        blocks.dataset.save_to_disk(str(workdir / f"blocks-{objective}"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_trainer(workdir: Path, objective: str, steps: int, warmup: int, device: str, output_loss: str) -> dict:
    import datasets
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling,
                              GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments)

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(workdir / f"tok-{objective}")
    blocks = datasets.load_from_disk(str(workdir / f"blocks-{objective}"))
    if objective == "mlm":
        model = BertForMaskedLM(BertConfig(**BERT, pad_token_id=tok.pad_token_id))
    else:
        model = GPT2LMHeadModel(GPT2Config(**GPT2))
    collator = DataCollatorForLanguageModeling(tok, mlm=objective == "mlm", mlm_probability=0.15)
    times: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=5e-4,
            weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=device == "cpu", bf16=device == "cuda",
            dataloader_num_workers=0, seed=0, disable_tqdm=True,
        )
        Trainer(model=model, args=args, train_dataset=blocks, data_collator=collator, callbacks=[Clock()]).train()
    seconds = times[-1] - times[warmup - 1]
    return {"tokens_per_s": BATCH * LENGTH * (steps - warmup) / seconds, "final_loss": losses[-1]}


def run_mmssl(workdir: Path, objective: str, steps: int, warmup: int, device: str, output_loss: str) -> dict:
    from mmssl.recipes import parse_recipe
    from mmssl.train.loop import train

    with tempfile.TemporaryDirectory() as out:
        recipe = parse_recipe({
            "output_dir": out, "seed": 0,
            "data": {"source": "files", "path": str(workdir / "corpus.txt"), "eval_fraction": 0.0},
            "tokenizer": {"path": str(workdir / f"tok-{objective}")},
            "model": {"arch": "bert" if objective == "mlm" else "gpt2", "config": BERT if objective == "mlm" else GPT2},
            "objective": {"name": objective, "max_length": LENGTH, "packing": True,
                          **({"output_loss": output_loss} if objective == "clm" else {})},
            "train": {"batch_size": BATCH, "max_steps": steps, "learning_rate": 5e-4, "weight_decay": 0.0,
                      "max_grad_norm": 1.0, "log_every": 1, "progress": False, "cpu": device == "cpu",
                      "mixed_precision": "bf16" if device == "cuda" else "no"},
        })
        train(recipe)
        events = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    steps_log = {e["step"]: e for e in events if e["event"] == "train"}
    seconds = steps_log[steps]["elapsed_s"] - steps_log[warmup]["elapsed_s"]
    return {"tokens_per_s": BATCH * LENGTH * (steps - warmup) / seconds, "final_loss": steps_log[steps]["loss"]}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    use_shapes(args.device)
    runner = run_mmssl if args.impl == "mmssl" else run_trainer
    result = runner(Path(args.workdir), args.objective, args.steps, args.warmup, args.device, args.output_loss)
    result["peak_rss_mb"] = peak_rss_mb()
    if args.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output-loss", default="auto", choices=["auto", "chunked", "plain", "liger"],
                        help="mmssl's causal-LM output layer (objective.output_loss)")
    parser.add_argument("--objectives", nargs="+", default=["mlm", "clm"], choices=["mlm", "clm"])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=4000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    use_shapes(args.device)

    with tempfile.TemporaryDirectory() as workdir:
        prepare(Path(workdir), args.scenes)
        print(f"# {args.device}: batch {BATCH} x {LENGTH} tokens, vocab {VOCAB}, {args.steps} steps ({args.warmup} "
              f"untimed), {args.threads} threads, {os.cpu_count()} CPUs; mmssl clm output_loss {args.output_loss}",
              flush=True)
        for objective in args.objectives:
            results: dict[str, list[dict]] = {"mmssl": [], "trainer": []}
            for repeat in range(args.repeats):
                order = ["trainer", "mmssl"] if repeat % 2 == 0 else ["mmssl", "trainer"]
                for impl in order:
                    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--objective", objective,
                           "--workdir", workdir, "--steps", str(args.steps), "--warmup", str(args.warmup),
                           "--threads", str(args.threads), "--device", args.device, "--output-loss", args.output_loss]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
                    if line is None:
                        sys.exit(f"{impl} {objective} failed:\n{done.stderr[-3000:]}")
                    result = json.loads(line[7:])
                    results[impl].append(result)
                    gpu = f"  peak GPU {result['peak_gpu_mb']:6.0f} MB" if "peak_gpu_mb" in result else ""
                    print(f"{objective} {impl:8s} repeat {repeat}: {result['tokens_per_s']:8.0f} tokens/s  "
                          f"peak RSS {result['peak_rss_mb']:6.0f} MB{gpu}  loss {result['final_loss']:.3f}", flush=True)
            ours = statistics.median(r["tokens_per_s"] for r in results["mmssl"])
            theirs = statistics.median(r["tokens_per_s"] for r in results["trainer"])
            mem_ours = max(r["peak_rss_mb"] for r in results["mmssl"])
            mem_theirs = max(r["peak_rss_mb"] for r in results["trainer"])
            paired = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results["mmssl"], results["trainer"])]
            gpu = ""
            if args.device == "cuda":
                gpu = (f"; peak GPU {max(r['peak_gpu_mb'] for r in results['mmssl']):.0f} MB vs "
                       f"{max(r['peak_gpu_mb'] for r in results['trainer']):.0f} MB")
            print(f"{objective}: mmssl {ours:.0f} tokens/s vs Trainer {theirs:.0f} tokens/s -> {ours / theirs:.2f}x "
                  f"(per repeat {min(paired):.2f}-{max(paired):.2f}x); peak RSS {mem_ours:.0f} MB vs {mem_theirs:.0f} "
                  f"MB ({mem_ours / mem_theirs:.2f}x){gpu}", flush=True)


if __name__ == "__main__":
    main()
