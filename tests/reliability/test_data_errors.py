"""Bad data through the real CLI: one `mmssl: error:` line naming the key, file, line or column and the fix;
no traceback; the input files left byte-identical. Most cases run `mmssl augment`/`mmssl mine` (they
fail within a couple of seconds); the `data.eval_path` and tokenizer cases need `mmssl train`."""

from __future__ import annotations

import pytest

import json
from pathlib import Path

import pandas as pd
import yaml
from clirun import assert_clear_error, mmssl, tree_hashes
from helpers import ROOT, lm_recipe

MINE = str(ROOT / "configs/mine_world_bm25.yaml")
AUGMENT = str(ROOT / "configs/augment_world.yaml")


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pairs(n: int = 6) -> list[dict]:
    return [{"anchor": f"a red circle number {i}", "positive": f"circle {i} is red", "n": i} for i in range(n)]


def refused(data: Path, *args: str, needles: tuple[str, ...]) -> str:
    """Run `mmssl ARGS`, assert a clear refusal containing `needles` and that `data` is unchanged."""
    before = tree_hashes(data)
    message = assert_clear_error(mmssl(*args), *needles)
    assert tree_hashes(data) == before
    return message


def augment_args(tmp_path: Path, path: Path, *extra: str) -> tuple[str, ...]:
    return ("augment", AUGMENT, "data.source=files", f"data.path={path}", f"output.path={tmp_path / 'out' / 'p.jsonl'}",
            *extra)


def train_recipe(tmp_path: Path, **data) -> Path:
    raw = lm_recipe(tmp_path / "run", "mlm", max_steps=2)
    raw["data"] = {"source": "files", **data}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# 1. malformed jsonl / csv: the file and the line --------------------------------------------------------


@pytest.mark.slow
def test_malformed_jsonl_line_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    bad = data / "x.jsonl"
    bad.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "a", \n{"text": "four"}\n{"text": "five"}\n')
    message = refused(data, *augment_args(tmp_path, bad),
                      needles=(f"data.path {str(bad)!r}", "line 3 is not valid JSON", "Expecting property name"))
    assert "An error occurred while generating the dataset" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_line_that_is_not_json_in_mining_pairs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = [json.dumps(r) for r in pairs(5)]
    lines[1] = "anchor: a red circle, positive: circle is red"
    (data / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    refused(data, "mine", MINE, f"output={tmp_path / 'mined.jsonl'}", "data.source=files",
            f"data.path={data / 'pairs.jsonl'}", needles=("pairs.jsonl", "line 2 is not valid JSON", "Expecting value"))


@pytest.mark.slow
def test_csv_row_with_extra_fields_names_file_and_line(tmp_path):
    data = tmp_path / "folder"
    data.mkdir()
    (data / "a.csv").write_text("text,id\nfine sentence here,1\n")
    (data / "b.csv").write_text('text,id\n"one, quoted",1\ntwo, unquoted,2\nthree,3\n')
    refused(data, *augment_args(tmp_path, data),
            needles=(f"data.path {str(data)!r}", f"{data / 'b.csv'}: line 3 has 3 fields but the header has 2",
                     "quote fields"))


# 2. data.eval_path: its own key --------------------------------------------------------------------------


@pytest.mark.slow
def test_missing_eval_path_names_eval_path(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("a red circle above a square\na blue star\n" * 10)
    missing = data / "held_out.txt"
    recipe = train_recipe(tmp_path, path=str(data / "train.txt"), eval_path=str(missing))
    message = refused(data, "train", str(recipe), needles=(f"data.eval_path {str(missing)!r}", "no such file"))
    assert "data.path" not in message


# 3. the mining corpus: corpus.path, not data.path ---------------------------------------------------------


@pytest.mark.slow
def test_missing_or_empty_mining_corpus_names_corpus_path(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "empty.jsonl").write_text("")
    base = ("mine", MINE, f"output={tmp_path / 'mined.jsonl'}", "data.world.num_scenes=40", "corpus.source=files")
    for path, needle in [(data / "nope.jsonl", "no such file or folder"), (data / "empty.jsonl", "no examples found")]:
        message = refused(data, *base, f"corpus.path={path}", needles=(f"corpus.path {str(path)!r}", needle))
        assert "data.path" not in message
    assert not (tmp_path / "mined.jsonl").exists()


# 4./5. text roles whose column is not text ----------------------------------------------------------------


@pytest.mark.slow
def test_int_column_in_parquet_fails_before_the_tokenizer(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"text": list(range(30)), "body": [f"sentence {i}" for i in range(30)]}).to_parquet(data / "t.parquet")
    recipe = train_recipe(tmp_path, path=str(data / "t.parquet"))
    refused(data, "train", str(recipe), needles=(
        f"data.path {str(data / 't.parquet')!r}", "column 'text' (role 'text') holds int64 values, not text",
        "data.columns.text=<column name>", "['body']"))


@pytest.mark.slow
def test_augment_on_a_renamed_non_text_column(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    jsonl(data / "s.jsonl", [{"sentence": f"a small red circle {i}", "n": i} for i in range(5)])
    message = refused(data, *augment_args(tmp_path, data / "s.jsonl", "data.columns.text=n"), needles=(
        "s.jsonl", "column 'n' (role 'text') holds int64 values", "data.columns.text=<column name>", "['sentence']"))
    assert "empty" not in message


@pytest.mark.slow
def test_list_column_in_mining_corpus(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"doc": [["a", "b"], ["c"]], "id": [1, 2]}).to_parquet(data / "c.parquet")
    refused(data, "mine", MINE, f"output={tmp_path / 'mined.jsonl'}", "data.world.num_scenes=40", "corpus.source=files",
            f"corpus.path={data / 'c.parquet'}", "corpus.columns.text=doc",
            needles=("corpus.path", "column 'doc' (role 'text') holds lists", "no column holds text"))


@pytest.mark.slow
def test_mixed_types_and_all_null_columns(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = pairs()
    rows[3]["positive"] = 42
    jsonl(data / "mixed.jsonl", rows)
    refused(data, "mine", MINE, f"output={tmp_path / 'mined.jsonl'}", "data.source=files",
            f"data.path={data / 'mixed.jsonl'}",
            needles=("mixed.jsonl", "column 'positive' (role 'positive') holds mixed JSON values (row 3 is 42"))
    jsonl(data / "nulls.jsonl", [{"sentence": None, "other": "x"}] * 3)
    refused(data, *augment_args(tmp_path, data / "nulls.jsonl", "data.columns.text=sentence"),
            needles=("column 'sentence' (role 'text') holds no values (null in every row)", "['other']"))


@pytest.mark.slow
def test_null_texts_count_as_empty_in_augment_and_mine(tmp_path):
    """A null in a text column is an empty text: augment and mine skip and count it, as they do blank text."""
    data = tmp_path / "data"
    data.mkdir()
    sentences = ["A small red circle is above a big square.", None, "A blue star is left of a green circle.", ""]
    pd.DataFrame({"text": sentences}).to_parquet(data / "s.parquet")
    out = tmp_path / "out" / "p.jsonl"
    done = mmssl(*augment_args(tmp_path, data / "s.parquet", "views=[{type: swap, p: 0.5}]"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 null in 'text' (of 4 rows)" in done.stderr
    assert json.loads(done.stdout)["skipped_empty"] == 2 and json.loads(done.stdout)["sentences"] == 2
    assert {r["anchor"] for r in map(json.loads, out.read_text().splitlines())} == {sentences[0], sentences[2]}

    rows = pairs(8)
    rows[2]["positive"] = None
    jsonl(data / "pairs.jsonl", rows)
    before = tree_hashes(data)
    done = mmssl("mine", MINE, f"output={tmp_path / 'mined.jsonl'}", "data.source=files",
                 f"data.path={data / 'pairs.jsonl'}", "num_negatives=1", "window=5", "guards.max_relative_score=null")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["counts"]["skipped_empty_query_or_positive"] == 1
    assert tree_hashes(data) == before


@pytest.mark.slow
def test_null_texts_train_a_language_model(tmp_path):
    """Nulls once reached the tokenizer trainer (TypeError); now they read as empty texts, with a warning."""
    data = tmp_path / "data"
    data.mkdir()
    texts = [None if i % 4 == 0 else f"a red circle number {i} is above a big blue square" for i in range(60)]
    pd.DataFrame({"text": texts}).to_parquet(data / "t.parquet")
    before = tree_hashes(data)
    done = mmssl("train", str(train_recipe(tmp_path, path=str(data / "t.parquet"), eval_fraction=0.0)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "t.parquet': 15 null in 'text' (of 60 rows)" in done.stderr and "Traceback" not in done.stderr
    assert json.loads(done.stdout)["output_dir"] == str(tmp_path / "run") and tree_hashes(data) == before
