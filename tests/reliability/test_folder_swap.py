"""`mmssl.outputs.folder_swapped_in`, how `mmssl finetune` and `mmssl debias` replace a folder output: the new
one appears whole or not at all, and an earlier output survives an error or a kill between the two moves."""

import pytest

from mmssl.outputs import folder_swapped_in


def test_new_output_replaces_the_old_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.json").write_text("old")
    with pytest.raises(RuntimeError):
        with folder_swapped_in(out) as work:
            (work / "new.json").write_text("half")
            raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "old.json").read_text() == "old"
    with folder_swapped_in(out) as work:
        (work / "new.json").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.json"]


def test_an_earlier_output_moved_aside_by_a_killed_run_is_put_back_first(tmp_path):
    out, aside = tmp_path / "out", tmp_path / ".out.mmssl-old"
    aside.mkdir()  # killed after moving the earlier output aside, before moving the new one in
    (aside / "old.json").write_text("old")
    with pytest.raises(RuntimeError):
        with folder_swapped_in(out):
            raise RuntimeError("fails again")
    assert (out / "old.json").read_text() == "old" and not aside.exists()
