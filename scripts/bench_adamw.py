"""AdamW step time on this machine: torch's foreach kernel vs its fused kernel (which mmssl's trainer now
uses, as the transformers Trainer does), for parameter counts like the benchmarks' models (12M: the bench_lm
GPT-2; 22.7M: all-MiniLM-L6-v2). Random parameters and gradients; implementations alternate; 10 steps each.

    flock /tmp/mmssl-bench.lock python scripts/bench_adamw.py
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    torch.manual_seed(0)
    for total in (12_000_000, 22_700_000):
        params = [torch.nn.Parameter(torch.randn(total // 8)) for _ in range(8)]
        params += [torch.nn.Parameter(torch.randn(384)) for _ in range(50)]
        for p in params:
            p.grad = torch.randn_like(p)
        timings: dict[str, list[float]] = {"foreach": [], "fused": []}
        for kind in ("foreach", "fused", "foreach", "fused"):
            optimizer = torch.optim.AdamW(params, lr=1e-3, **{kind: True})
            optimizer.step()  # creates the state
            start = time.perf_counter()
            for _ in range(10):
                optimizer.step()
            timings[kind].append((time.perf_counter() - start) * 100)
        foreach, fused = min(timings["foreach"]), min(timings["fused"])
        print(f"{total / 1e6:5.1f}M parameters: foreach {foreach:6.1f} ms/step, fused {fused:6.1f} ms/step "
              f"-> {foreach / fused:.1f}x ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
