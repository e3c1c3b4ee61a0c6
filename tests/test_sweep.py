"""`mmssl sweep`: the grid and its values (lists included), one real process per run, the table and the report
with metric-against-value figures, finished runs kept on a rerun, and clear errors for a bad grid."""

from __future__ import annotations

import csv
import json

import pytest
from clirun import assert_clear_error, mmssl, mmssl_here, write_recipe
from helpers import lm_recipe

from mmssl.errors import RecipeError
from mmssl.sweep import parse_grid, plan, split_values


def test_values_split_on_top_level_commas_and_parse_as_yaml(tmp_path):
    assert split_values("0.2,0.5,[0.2, 1.0]") == ["0.2", "0.5", "[0.2, 1.0]"]
    grid, fixed = parse_grid(["objective.views.crop_scale=[0.2,1.0],[0.8,1.0]", "a.b=1,2,3", "train.max_steps=5"])
    assert grid == {"objective.views.crop_scale": [[0.2, 1.0], [0.8, 1.0]], "a.b": [1, 2, 3]}
    assert fixed == ["train.max_steps=5"]
    runs = plan(grid, tmp_path)
    assert len(runs) == 6 and len({r.name for r in runs}) == 6
    assert runs[0].overrides() == ["objective.views.crop_scale=[0.2, 1.0]", "a.b=1"]
    for bad, message in ((["x"], "KEY=V1,V2"), (["train.max_steps=5"], "nothing to sweep"), (["a=1,,2"], "empty value"),
                         (["a=1,2", "a=3,4"], "swept twice")):
        with pytest.raises(RecipeError, match=message):
            parse_grid(bad)


@pytest.mark.slow
def test_a_sweep_runs_each_setting_in_its_own_process_and_tabulates_it(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", lm_recipe(tmp_path / "unused", "mlm", max_steps=4, log_every=2))
    out = tmp_path / "sweep"
    grid = ["objective.mask_probability=0.1,0.3", "train.learning_rate=0.003"]
    dry = mmssl_here("sweep", str(recipe), *grid, "--out", str(out), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert len(dry.stdout.splitlines()) == 2 and "objective.mask_probability=0.3" in dry.stdout and not out.exists()
    done = mmssl("sweep", str(recipe), *grid, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["finished"] == 2 and result["failed"] == []
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["objective.mask_probability"] for r in rows] == ["0.1", "0.3"]
    assert all(float(r["perplexity"]) > 1 and r["status"] == "finished" for r in rows)
    starts = list((out / rows[0]["run"] / "log.jsonl").open())
    figures = {p.name for p in (out / "report").glob("*.png")}
    assert "sweep_objective_mask_probability.png" in figures and "loss.png" in figures
    again = mmssl_here("sweep", str(recipe), *grid, "--out", str(out))  # finished runs are kept, not trained again
    assert again.returncode == 0 and again.stderr.count("is finished; kept") == 2
    assert list((out / rows[0]["run"] / "log.jsonl").open()) == starts
    changed = mmssl_here("sweep", str(recipe), "objective.mask_probability=0.1,0.3", "train.learning_rate=0.001", "--out",
                    str(out))  # a kept run must be the run the sweep asks for
    assert_clear_error(changed, "was trained with a different recipe (train differ)", "new --out")


@pytest.mark.slow
def test_a_bad_grid_is_one_clear_error_before_any_run(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", lm_recipe(tmp_path / "unused", "mlm"))
    assert_clear_error(mmssl("sweep", str(recipe), "objective.mask_probabilty=0.1,0.2", "--out", str(tmp_path / "s")),
                       "objective.mask_probabilty: unknown key")
    assert not (tmp_path / "s").exists()
    assert_clear_error(mmssl("sweep", str(recipe), "train.max_steps=2,3", "output_dir=/tmp/x"), "--out")
