"""`mmssl mine` and `mmssl augment` outputs through the real CLI: never an input, never a file or folder the
command did not write; an earlier output of their own is replaced only with overwrite, and atomically."""

from __future__ import annotations

import pytest

import json

from clirun import assert_clear_error, mmssl, mmssl_here, tree_hashes
from helpers import ROOT

MINE = str(ROOT / "configs/mine_world_bm25.yaml")
AUGMENT = str(ROOT / "configs/augment_world.yaml")
SMALL = "data.world.num_scenes=60"


def pairs_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"anchor": f"a red circle number {i}", "positive": f"circle {i} is red and round"} for i in range(30)]
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "notes.txt").write_text("the user's notes")
    return data


@pytest.mark.slow
def test_mine_into_an_existing_folder_deletes_nothing(tmp_path):
    data = pairs_file(tmp_path)
    before = tree_hashes(data)
    for extra in ([], ["overwrite=true"]):
        done = mmssl("mine", MINE, f"output={data}", SMALL, *extra)
        assert_clear_error(done, f"output {str(data)!r} already exists and was not written by this mmssl command")
    assert tree_hashes(data) == before


@pytest.mark.slow
def test_mine_never_writes_over_its_inputs(tmp_path):
    data = pairs_file(tmp_path)
    before = tree_hashes(data)
    source = ["data.source=files", f"data.path={data / 'pairs.jsonl'}"]
    done = mmssl("mine", MINE, f"output={data / 'pairs.jsonl'}", *source, "overwrite=true")
    assert_clear_error(done, "is also the input data.path")
    done = mmssl_here("mine", MINE, f"output={data / 'mined.jsonl'}", "data.source=files", f"data.path={data}")
    assert_clear_error(done, "lies inside the input data.path")
    done = mmssl_here("mine", MINE, f"output={tmp_path / 'm.jsonl'}", *source, f"bm25.index_dir={data}")
    assert_clear_error(done, f"bm25.index_dir {str(data)!r} contains the input data.path")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    done = mmssl_here("mine", MINE, f"output={tmp_path / 'm.jsonl'}", *source, f"bm25.index_dir={other}")
    assert_clear_error(done, "is not empty and holds no BM25 index")
    assert tree_hashes(data) == before and (other / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_mine_replaces_only_its_own_earlier_output_and_only_with_overwrite(tmp_path):
    for output in (tmp_path / "mined.jsonl", tmp_path / "mined-folder"):
        done = mmssl("mine", MINE, f"output={output}", SMALL)
        assert done.returncode == 0, done.stderr[-2000:]
        first = tree_hashes(output)
        assert_clear_error(mmssl_here("mine", MINE, f"output={output}", SMALL), "already exists (an earlier output)",
                           "overwrite=true")
        assert tree_hashes(output) == first
        done = mmssl("mine", MINE, f"output={output}", "data.world.num_scenes=80", "overwrite=true")
        assert done.returncode == 0, done.stderr[-2000:]
        assert tree_hashes(output) != first
        stats = json.loads(output.with_name(output.name + ".stats.json").read_text())
        assert stats["queries"] > 0 and "num_scenes: 80" in stats["config"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mined-folder", "mined-folder.stats.json", "mined.jsonl", "mined.jsonl.stats.json"]  # no temporaries left
    user_file = tmp_path / "theirs.jsonl"
    user_file.write_text('{"a": 1}\n')
    done = mmssl_here("mine", MINE, f"output={user_file}", SMALL, "overwrite=true")
    assert_clear_error(done, "was not written by this mmssl command")
    assert user_file.read_text() == '{"a": 1}\n'


@pytest.mark.slow
def test_augment_refuses_inputs_and_files_it_did_not_write(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    texts = data / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"a red circle above square {i}"}) + "\n" for i in range(10)))
    before = tree_hashes(data)
    source = ["data.source=files", f"data.path={texts}"]
    assert_clear_error(mmssl_here("augment", AUGMENT, f"output.path={texts}", *source, "output.overwrite=true"),
                       "is also the input data.path")
    assert_clear_error(mmssl_here("augment", AUGMENT, f"output.path={data}", "output.format=disk", *source,
                             "output.overwrite=true"), "contains the input data.path")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert_clear_error(mmssl_here("augment", AUGMENT, f"output.path={folder}", "output.format=disk", *source,
                             "output.overwrite=true"), "already exists and was not written by this mmssl command")
    assert tree_hashes(data) == before and (folder / "keep.txt").read_text() == "mine"
    out = tmp_path / "pairs.jsonl"
    assert mmssl("augment", AUGMENT, f"output.path={out}", *source).returncode == 0
    assert_clear_error(mmssl_here("augment", AUGMENT, f"output.path={out}", *source), "output.overwrite=true")
    assert mmssl("augment", AUGMENT, f"output.path={out}", *source, "output.overwrite=true").returncode == 0


@pytest.mark.slow
def test_mine_output_matching_an_input_glob_is_refused(tmp_path):
    data = pairs_file(tmp_path)
    done = mmssl("mine", MINE, "output=mined.jsonl", "data.source=files", "data.path=*.jsonl", cwd=data)
    assert_clear_error(done, "matches the input data.path '*.jsonl'")
    assert not (data / "mined.jsonl").exists()


@pytest.mark.slow
def test_mine_keeps_a_stats_file_it_did_not_write(tmp_path):
    stats = tmp_path / "mined.jsonl.stats.json"
    stats.write_text('{"mine": "the user\'s"}')
    assert_clear_error(mmssl("mine", MINE, f"output={tmp_path / 'mined.jsonl'}", SMALL), "was not written by mmssl mine")
    assert stats.read_text() == '{"mine": "the user\'s"}' and not (tmp_path / "mined.jsonl").exists()


@pytest.mark.slow
def test_an_interrupted_replace_gets_the_earlier_output_back(tmp_path):
    out = tmp_path / "mined-folder"
    assert mmssl("mine", MINE, f"output={out}", SMALL).returncode == 0
    first = tree_hashes(out)
    out.rename(tmp_path / ".mined-folder.mmssl-old")  # killed after moving the old output aside
    assert_clear_error(mmssl("mine", MINE, f"output={out}", SMALL), "already exists (an earlier output)")
    assert tree_hashes(out) == first
