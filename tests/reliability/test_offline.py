"""Offline first, proven: training, evaluation, mining and augmentation on local data run in a network
namespace with only loopback, with HF_HUB_OFFLINE *unset*, and open no socket at all (an audit hook in the
CLI process records every connect and address lookup)."""

from __future__ import annotations

import pytest

import json

from clirun import cli_env, mmssl, write_recipe
from helpers import PYTHON, ROOT, lm_recipe


def isolated(tmp_path, name: str, *args: str):
    out = tmp_path / f"net-{name}"
    env = {k: v for k, v in cli_env().items() if not k.startswith("HF_HUB_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    done = mmssl(*args, env=env, prefix=["unshare", "-n", PYTHON, str(ROOT / "tests/hub_server.py"), str(out), "--"])
    return done, json.loads((out / "hub.json").read_text())["network"]


@pytest.mark.slow
def test_train_eval_mine_and_augment_open_no_socket(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", lm_recipe(tmp_path / "run", "mlm", max_steps=2))
    steps = [
        ("train", ["train", str(recipe)]),
        ("eval", ["eval", str(tmp_path / "run")]),
        ("mine", ["mine", str(ROOT / "configs/mine_world_bm25.yaml"), f"output={tmp_path / 'mined.jsonl'}",
                  "data.world.num_scenes=60"]),
        ("augment", ["augment", str(ROOT / "configs/augment_world.yaml"), f"output.path={tmp_path / 'aug.jsonl'}",
                     "data.world.num_scenes=20"]),
    ]
    for name, args in steps:
        done, network = isolated(tmp_path, name, *args)
        assert done.returncode == 0, (name, done.stderr[-2000:])
        assert network == [], (name, network)
