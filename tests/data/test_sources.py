import json

import pandas as pd
import pytest

from mmssl.data.sources import load_splits
from mmssl.errors import DataError
from mmssl.recipes import DataConfig, WorldConfig


def files_cfg(path, **kw) -> DataConfig:
    return DataConfig(source="files", path=str(path), **kw)


def test_text_files_skip_blank_lines(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n   \nsecond line\n", encoding="utf-8")
    splits = load_splits(files_cfg(tmp_path / "a.txt", eval_fraction=0.0), "text", ["text"])
    assert splits.train["text"] == ["first line", "second line"] and splits.eval is None


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_structured_files_with_column_mapping(tmp_path, fmt):
    rows = [{"body": f"text number {i}", "id": i} for i in range(40)]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    splits = load_splits(files_cfg(path, columns={"text": "body"}, eval_fraction=0.1), "text", ["text"])
    assert splits.train.column_names == ["text"]
    assert len(splits.train) + len(splits.eval) == 40 and len(splits.eval) == 4
    assert set(splits.train["text"]) | set(splits.eval["text"]) == {r["body"] for r in rows}


def test_missing_column_names_existing_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "x"}\n{"body": "y"}\n')
    with pytest.raises(DataError, match=r"column 'text' \(role 'text'\) not found; the data has columns \['body'\]. "
                                        r"Map it with data.columns.text=<column name>"):
        load_splits(files_cfg(path), "text", ["text"])


def test_empty_missing_and_non_utf8_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no examples found"):
        load_splits(files_cfg(empty), "text", ["text"])
    with pytest.raises(DataError, match="no such file or folder"):
        load_splits(files_cfg(tmp_path / "nope.txt"), "text", ["text"])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ok\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt: line 1 is not valid UTF-8"):
        load_splits(files_cfg(latin), "text", ["text"])


def test_separate_eval_file_and_max_examples(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(f"line {i}" for i in range(30)))
    (tmp_path / "eval.txt").write_text("held out one\nheld out two\n")
    cfg = files_cfg(tmp_path / "train.txt", eval_path=str(tmp_path / "eval.txt"), max_examples=10)
    splits = load_splits(cfg, "text", ["text"])
    assert len(splits.train) == 10 and splits.eval["text"] == ["held out one", "held out two"]


def test_world_source_gives_train_and_held_out_eval():
    splits = load_splits(DataConfig(world=WorldConfig(num_scenes=50)), "pairs", ["anchor", "positive"])
    assert splits.train.column_names == ["anchor", "positive"]
    assert len(splits.eval) > 0


def test_malformed_lines_are_named_once(tmp_path, caplog):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "fine"}\n')
    (folder / "b.jsonl").write_text('{"text": "fine"}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"data.path '.*d': .*b.jsonl: line 3 is an array, not a JSON object"):
        load_splits(files_cfg(folder), "text", ["text"])
    assert not [r for r in caplog.records if r.name.startswith("datasets")]  # no second report from `datasets`
    bad_csv = tmp_path / "x.csv"
    bad_csv.write_text("text\nok\n")
    cfg = files_cfg(tmp_path / "x.csv", eval_path=str(tmp_path / "e.jsonl"))
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"^data.eval_path '.*e.jsonl': line 2 is not valid JSON \(Expecting value"):
        load_splits(cfg, "text", ["text"])


def test_keys_are_named_by_section(tmp_path):
    with pytest.raises(DataError, match=r"^corpus.path '.*nope': no such file .* set corpus.source to 'world'"):
        load_splits(files_cfg(tmp_path / "nope"), "text", ["text"], section="corpus")
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"Map it with corpus.columns.text="):
        load_splits(files_cfg(path), "text", ["text"], section="corpus")
    with pytest.raises(DataError, match=r"^data.eval_path '.*missing.txt': no such file or folder .*check the path$"):
        load_splits(files_cfg(path, columns={"text": "body"}, eval_path=str(tmp_path / "nope" / "missing.txt")),
                    "text", ["text"])


@pytest.mark.parametrize("values, found", [
    ([1, 2], "int64 values"), ([1.5, None], "float64 values"), ([["a"], ["b"]], "lists"),
    ([{"a": "b"}] * 2, r"records \(JSON objects\)"), ([None, None], r"no values \(null in every row\)"),
    (["a", 3], r"mixed JSON values \(row 1 is 3, a number\)"),
])
def test_text_roles_must_hold_text(tmp_path, values, found):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"n": v, "body": "words"}) + "\n" for v in values))
    fix = r"map a text column with data.columns.positive=<column name> \(text columns: \['body'\]\)"
    with pytest.raises(DataError, match=rf"d.jsonl': column 'n' \(role 'positive'\) holds {found}, not text; {fix}"):
        load_splits(files_cfg(path, columns={"positive": "n", "anchor": "body"}), "pairs", ["anchor", "positive"])


def test_nulls_read_as_empty_text(tmp_path, caplog):
    pd.DataFrame({"text": ["a b", None, "c d", ""]}).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "e.jsonl").write_text('{"text": "held out"}\n{"other": 1}\n')
    cfg = files_cfg(tmp_path / "t.parquet", eval_path=str(tmp_path / "e.jsonl"), max_examples=3)
    splits = load_splits(cfg, "text", ["text"])
    assert splits.train["text"] == ["a b", "", "c d"] and splits.eval["text"] == ["held out", ""]
    assert "t.parquet': 1 null in 'text' (of 3 rows); nulls count as empty texts" in caplog.text
    assert "e.jsonl': 1 null in 'text' (of 2 rows)" in caplog.text
