"""Shared test helpers (importable as `helpers`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}
TINY_GPT2 = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}


def lm_recipe(output_dir: Path, objective: str = "mlm", **train) -> dict:
    """A raw recipe dict for a tiny LM on a small built-in world (a few seconds on CPU)."""
    return copy.deepcopy({
        "name": f"test-{objective}",
        "output_dir": str(output_dir),
        "seed": 0,
        "data": {"source": "world", "world": {"num_scenes": 300}},
        "tokenizer": {"vocab_size": 300},
        "model": {"arch": "bert" if objective == "mlm" else "gpt2",
                  "config": TINY_BERT if objective == "mlm" else TINY_GPT2},
        "objective": {"name": objective, "max_length": 32},
        "train": {"batch_size": 8, "learning_rate": 3e-3, "max_steps": 20, "log_every": 5,
                  "progress": False, "cpu": True, **train},
    })
