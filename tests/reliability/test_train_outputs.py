"""What `mmssl train` may write, through the real CLI on tiny runs: never over an input or a folder it did not
write, resume only into its own run, overwrite removes exactly the earlier run's files; unwritable places,
a full disk and bad settings give one clear message. Protected files are compared by sha256 before and after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clirun import assert_clear_error, in_mount_namespace, mmssl, mmssl_here, tree_hashes, write_recipe
from helpers import lm_recipe

from mmssl.recipes import parse_recipe
from mmssl.train.checkpoints import list_checkpoints, read_state
from mmssl.train.loop import train


def recipe_file(tmp_path: Path, name: str = "r.yaml", **train_settings) -> Path:
    raw = lm_recipe(tmp_path / "unused", "mlm", **{"max_steps": 4, **train_settings})
    return write_recipe(tmp_path / name, raw)


def finished_run(directory: Path, **train_settings) -> Path:
    """A finished tiny MLM run, trained in-process (a few seconds)."""
    train(parse_recipe(lm_recipe(directory, "mlm", **{"max_steps": 4, **train_settings})))
    return directory


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("base") / "run", save_every=2)


@pytest.mark.slow
def test_output_dir_that_is_the_starting_model_or_tokenizer_is_refused(tmp_path, base_run):
    model = tmp_path / "model"
    shutil.copytree(base_run, model)
    before = tree_hashes(model)
    recipe = recipe_file(tmp_path)
    for args in ([f"model.pretrained={model}", f"tokenizer.path={model}"], [f"tokenizer.path={model}"],
                 [f"model.pretrained={model}", "train.overwrite=true"]):
        key = "model.pretrained" if "model.pretrained" in args[0] else "tokenizer.path"
        done = mmssl_here("train", str(recipe), f"output_dir={model}", *args)
        assert_clear_error(done, f"output_dir {str(model)!r} is also the input {key}")
    done = mmssl("train", str(recipe), f"output_dir={model / 'inside'}", f"data.source=files", f"data.path={model}")
    assert_clear_error(done, "lies inside the input data.path")
    assert tree_hashes(model) == before


@pytest.mark.slow
def test_a_folder_that_is_not_an_mmssl_run_is_refused_even_with_overwrite(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "config.json").write_text("{}")
    before = tree_hashes(folder)
    for extra in ([], ["train.overwrite=true"]):
        done = mmssl("train", str(recipe_file(tmp_path)), f"output_dir={folder}", *extra)
        assert_clear_error(done, "is not empty and is not an mmssl run", "config.json, notes.txt")
    assert tree_hashes(folder) == before


@pytest.mark.slow
def test_resuming_another_runs_checkpoint_into_a_finished_run_is_refused(tmp_path, base_run):
    other = finished_run(tmp_path / "other")
    before = tree_hashes(other)
    checkpoint = list_checkpoints(base_run)[0]
    recipe = recipe_file(tmp_path, max_steps=6, save_every=2)
    done = mmssl_here("train", str(recipe), f"output_dir={other}", f"train.resume_from={checkpoint}")
    assert_clear_error(done, "is a checkpoint of another run", "train.overwrite=true")
    assert tree_hashes(other) == before
    # into a new folder it resumes, and the run it came from is untouched
    source = tree_hashes(base_run)
    done = mmssl("train", str(recipe), f"output_dir={tmp_path / 'fresh'}", f"train.resume_from={checkpoint}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "fresh" / "metrics.json").read_text())["steps"] == 6
    assert tree_hashes(base_run) == source


@pytest.mark.slow
def test_overwrite_removes_exactly_what_the_earlier_run_wrote(tmp_path):
    out = finished_run(tmp_path / "run", max_steps=8, save_every=2)  # checkpoints 6 and 8
    (out / "my-notes.md").write_text("kept")  # the user's own file in the run folder
    done = mmssl("train", str(recipe_file(tmp_path, max_steps=4, save_every=2)), f"output_dir={out}",
                 "train.overwrite=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    assert (out / "my-notes.md").read_text() == "kept"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    # `latest` now continues the new run, not the discarded 8-step one
    done = mmssl("train", str(recipe_file(tmp_path, max_steps=6, save_every=2)), f"output_dir={out}",
                 "train.resume_from=latest")
    assert done.returncode == 0, done.stderr[-2000:]
    starts = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == "start"]
    assert [e["step"] for e in starts] == [0, 4]
    done = mmssl_here("train", str(recipe_file(tmp_path)), f"output_dir={out}", "train.overwrite=true",
                      "train.resume_from=latest")
    assert_clear_error(done, "train.overwrite=true deletes the run that train.resume_from=latest would continue")


@pytest.mark.slow
def test_a_run_that_failed_before_saving_anything_can_simply_be_rerun(tmp_path):
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path)
    assert_clear_error(mmssl("train", str(recipe), f"output_dir={out}", "model.config.hidden_size=-1"),
                       "cannot build a MLM model 'bert' from model.config", "negative dimension")
    done = mmssl("train", str(recipe), f"output_dir={out}")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_output_dir_that_is_a_file_or_below_a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("data")
    recipe = recipe_file(tmp_path)
    assert_clear_error(mmssl("train", str(recipe), f"output_dir={path}"), "is a file, not a folder")
    assert_clear_error(mmssl("train", str(recipe), f"output_dir={path / 'run'}"), "lies below", "which is a file")
    assert path.read_text() == "data"


@pytest.mark.slow
def test_read_only_output_folder(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = mmssl("train", str(recipe_file(tmp_path)), f"output_dir={mount / 'run'}",
                 prefix=in_mount_namespace(f"mount -t tmpfs tmpfs {mount} && mount -o remount,ro {mount}"))
    assert_clear_error(done, f"output_dir {str(mount / 'run')!r} cannot be written", "Read-only file system")


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, base_run):
    """A file system 1.5 checkpoints large: the first checkpoint fits, the second does not."""
    mount, copy = tmp_path / "small", tmp_path / "after"
    mount.mkdir()
    recipe = recipe_file(tmp_path, max_steps=6, save_every=2, keep_checkpoints=3)
    out = mount / "run"
    checkpoint_kb = sum(p.stat().st_size for p in list_checkpoints(base_run)[0].rglob("*") if p.is_file()) // 1024
    script = f"mount -t tmpfs -o size={int(checkpoint_kb * 1.5)}k tmpfs {mount}"
    runner = ["sh", "-c", f'"$@"; status=$?; cp -r {out} {copy}; exit $status', "sh"]
    done = mmssl("train", str(recipe), f"output_dir={out}", prefix=in_mount_namespace(script) + runner)
    message = assert_clear_error(done, "writing the checkpoint of step", "No space left on device",
                                 "the partial checkpoint was removed")
    checkpoints = list_checkpoints(copy)
    assert checkpoints and f"the previous checkpoint {str(out / 'checkpoints' / checkpoints[-1].name)!r}" in message
    assert not list((copy / "checkpoints").glob(".tmp-*"))
    state = read_state(checkpoints[-1])
    assert sorted(state.files) == sorted(p.relative_to(checkpoints[-1]).as_posix()
                                         for p in checkpoints[-1].rglob("*") if p.is_file() and p.name != "trainer_state.json")


@pytest.mark.slow
def test_full_disk_during_the_final_export_names_the_checkpoint_to_resume(tmp_path, base_run):
    """Room for the two checkpoints but not for the exported model as well."""
    mount = tmp_path / "small"
    mount.mkdir()
    recipe = recipe_file(tmp_path, save_every=2)
    checkpoint_kb = sum(p.stat().st_size for p in list_checkpoints(base_run)[0].rglob("*") if p.is_file()) // 1024
    script = f"mount -t tmpfs -o size={2 * checkpoint_kb + 60}k tmpfs {mount}"
    done = mmssl("train", str(recipe), f"output_dir={mount / 'run'}", prefix=in_mount_namespace(script))
    assert_clear_error(done, "writing the trained model into", "No space left on device",
                       f"{str(mount / 'run' / 'checkpoints' / 'step-00000004')!r} is intact",
                       "train.resume_from=latest")


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("train.warmup_ratio=5", "train.warmup_ratio: 5.0 is out of range; it must be >= 0 and < 1"),
    ("train.save_every=-1", "train.save_every: -1 is out of range; it must be >= 0"),
    ("train.weight_decay=-1", "train.weight_decay: -1.0 is out of range; it must be >= 0"),
    ("tokenizer.vocab_size=0", "tokenizer.vocab_size: 0 is out of range; it must be >= 100"),
    ("train.log_every=0", "train.log_every: 0 is out of range; it must be >= 1"),
    ("train.warmup_steps=10", "train.warmup_steps=10 is not below the run's 4 steps"),
])
def test_nonsense_settings_are_refused_naming_the_key(tmp_path, override, message):
    out = tmp_path / "run"
    assert_clear_error(mmssl("train", str(recipe_file(tmp_path)), f"output_dir={out}", override), message)
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    """A run that has saved nothing yet may be redone without overwrite, but not while it is running."""
    import fcntl

    from mmssl.outputs import LOCK

    out = tmp_path / "run"
    recipe = recipe_file(tmp_path)
    assert_clear_error(mmssl_here("train", str(recipe), f"output_dir={out}", "model.config.hidden_size=-1"),
                       "model.config")  # leaves a run folder with nothing saved
    assert (out / "recipe.yaml").is_file() and not (out / LOCK).exists()  # a run that ended leaves no lock file
    with open(out / LOCK, "a") as held:  # what the first run's main process holds while it trains
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = tree_hashes(out)
        done = mmssl("train", str(recipe), f"output_dir={out}", "train.overwrite=true")
    assert_clear_error(done, f"output_dir {str(out)!r} is in use by another mmssl run")
    assert tree_hashes(out) == before


@pytest.mark.slow
def test_a_home_relative_output_dir_is_checked_where_it_is_written(tmp_path):
    home = tmp_path / "home"
    (home / "x").mkdir(parents=True)
    (home / "x" / "mine.txt").write_text("the user's")
    from clirun import cli_env

    done = mmssl("train", str(recipe_file(tmp_path)), "output_dir=~/x", "train.overwrite=true",
                 env=cli_env(HOME=str(home)), cwd=tmp_path)
    assert_clear_error(done, f"output_dir {str(home / 'x')!r} is not empty and is not an mmssl run")
    assert not (tmp_path / "~").exists() and (home / "x" / "mine.txt").read_text() == "the user's"


@pytest.mark.slow
def test_resuming_an_earlier_checkpoint_replaces_the_later_ones(tmp_path):
    out = finished_run(tmp_path / "run", max_steps=8, save_every=2, keep_checkpoints=4)  # 2, 4, 6, 8
    done = mmssl("train", str(recipe_file(tmp_path, max_steps=6, save_every=3, keep_checkpoints=4)),
                 f"output_dir={out}", f"train.resume_from={out / 'checkpoints' / 'step-00000004'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004", "step-00000006"]
    assert read_state(list_checkpoints(out)[-1]).step == 6
