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
