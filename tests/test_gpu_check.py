"""scripts/gpu_check.py, the one prepared GPU check, exercised on the CPU here (no GPU on CI): it trains shipped
recipes through the real CLI with the device's settings and tabulates each run's figures and status."""

from __future__ import annotations

import pytest

import subprocess

from helpers import PYTHON, ROOT


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "scripts/gpu_check.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_recipes_train_and_the_table_reports_them(tmp_path):
    done = run_check("--device", "cpu", "--steps", "2", "--skip-bench", "--only", "mlm_world,simcse_sup_world",
                     "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| recipe mlm_world | ok |" in done.stdout and "| recipe simcse_sup_world | ok |" in done.stdout
    assert "2 steps in" in done.stdout and "sts_spearman" in done.stdout and "2/2 ok" in done.stdout
    assert (tmp_path / "mlm_world" / "metrics.json").is_file() and (tmp_path / "simcse_sup_world.log").is_file()


@pytest.mark.slow
def test_an_unknown_recipe_is_named_and_no_gpu_is_a_clear_refusal(tmp_path):
    done = run_check("--device", "cpu", "--only", "nope_world", "--out", str(tmp_path))
    assert done.returncode != 0 and "no training recipe named ['nope_world']" in done.stderr
    done = subprocess.run([PYTHON, "scripts/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "no CUDA device is visible" in done.stderr


def test_a_fine_tuning_recipe_runs_after_the_recipe_it_starts_from():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [p.stem for p in module.recipes(["negclip_world"])] == ["clip_pairs_world", "negclip_world"]
    order = [p.stem for p in module.recipes(None)]
    assert order.index("clip_pairs_world") < order.index("negclip_world") and order[-1] == "negclip_world"
