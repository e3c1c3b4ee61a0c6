"""`mmssl augment` end to end: writes anchor/positive pairs (jsonl, parquet, save_to_disk) with
<output>.stats.json, a second back-translation run makes zero model calls (cache), the output trains a
supervised SimCSE recipe through `mmssl train`, and bad inputs fail with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmssl.commands import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ("model.config={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
        "max_position_embeddings: 64}")


def augment(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["augment", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write_config(path: Path, **raw) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_lexical_augment_writes_pairs_that_train(tmp_path, capsys):
    out = tmp_path / "aug" / "pairs.jsonl"
    code, printed, err = augment(capsys, "configs/augment_world.yaml", f"output.path={out}",
                                 "data.world.num_scenes=40")
    assert code == 0, err
    rows = read_jsonl(out)
    assert {"anchor", "positive", "view", "source_index"} == set(rows[0])
    assert {r["view"] for r in rows} == {"synonym", "insert", "swap", "keyboard"}
    assert all(r["anchor"] != r["positive"] for r in rows)
    stats = json.loads((out.parent / "pairs.jsonl.stats.json").read_text())
    assert stats["pairs"] == len(rows) == json.loads(printed)["pairs"]
    assert stats["sentences"] == 200 and stats["views"]["swap"]["kept"] + sum(stats["views"]["swap"]["dropped"].values()) == 200
    assert stats["translation_model_calls"] == 0

    # deterministic: the same recipe writes the same file
    again = tmp_path / "again.jsonl"
    assert augment(capsys, "configs/augment_world.yaml", f"output.path={again}", "data.world.num_scenes=40")[0] == 0
    assert again.read_text() == out.read_text()
    # refuses to overwrite without output.overwrite=true
    code, _, err = augment(capsys, "configs/augment_world.yaml", f"output.path={out}", "data.world.num_scenes=40")
    assert code == 2 and "output.overwrite=true" in err and len(err.strip().splitlines()) == 1

    # a contrastive recipe reads the pairs directly (data.source=files)
    run = tmp_path / "simcse"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "mmssl", "train", "configs/simcse_sup_world.yaml", f"output_dir={run}",
         "data.source=files", f"data.path={out}", TINY, "tokenizer.vocab_size=300", "objective.max_length=32",
         "train.progress=false", "train.batch_size=16", "train.max_steps=2", "train.eval_every=0",
         "train.save_every=0", "objective.eval_before=false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    from mmssl.data.text_views.tiny import build_tiny_marian

    root = tmp_path_factory.mktemp("mt")
    texts = ["a red circle is above a blue square", "the green star on the left"]
    return str(build_tiny_marian(root / "en-de", texts, seed=1)), str(build_tiny_marian(root / "de-en", texts, seed=2))


def bt_config(path: Path, marian, out: Path, cache: Path) -> Path:
    return write_config(
        path, name="bt", seed=0, data={"source": "world", "world": {"num_scenes": 8}},
        output={"path": str(out)}, cache={"path": str(cache)},
        views=[{"type": "backtranslation", "name": "marian", "device": "cpu",
                "generation": {"num_beams": 1, "max_length": 10, "batch_size": 16},
                "pivots": [{"forward": marian[0], "backward": marian[1], "pivot_lang": "de"}]},
               {"type": "backtranslation", "name": "apertium", "backend": "apertium",
                "pivots": [{"forward": "eng-spa"}]},
               {"type": "delete", "p": 0.2}])


def test_backtranslation_augment_second_run_hits_cache(tmp_path, capsys, marian):
    import datasets
    import pyarrow.parquet as pq

    cache = tmp_path / "cache.sqlite"
    first = tmp_path / "first.parquet"
    code, printed, err = augment(capsys, str(bt_config(tmp_path / "bt.yaml", marian, first, cache)))
    assert code == 0, err
    summary = json.loads(printed)
    assert summary["translation_model_calls"] > 0 and summary["cache"]["misses"] > 0
    table = pq.read_table(first)
    stats = json.loads(table.schema.metadata[b"mmssl_augment_stats"])
    assert set(stats["views"]) == {"marian", "apertium", "delete"}
    assert {"anchor", "positive"} <= set(table.column_names)

    # second run: same sentences, same models and settings -> everything from the cache, zero model calls
    second = tmp_path / "second"
    code, printed, err = augment(capsys, str(tmp_path / "bt.yaml"), f"output.path={second}", "output.format=disk")
    assert code == 0, err
    summary = json.loads(printed)
    assert summary["translation_model_calls"] == 0 and summary["cache"]["misses"] == 0 and summary["cache"]["hits"] > 0
    ds = datasets.load_from_disk(str(second))
    assert ds["positive"] == table.column("positive").to_pylist()
    assert "mmssl augment" in ds.info.description
    assert json.loads((second / "augment_stats.json").read_text())["translation_model_calls"] == 0


def test_bad_inputs(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    long = " ".join(f"word{i}" for i in range(40))
    data.write_text("\n".join(json.dumps({"sentence": s}) for s in
                              ["A small red circle is above a big square.", "", "   ", long]), encoding="utf-8")
    base = dict(data={"source": "files", "path": str(data), "columns": {"text": "sentence"}}, max_words=10,
                views=[{"type": "swap", "p": 0.5}])
    out = tmp_path / "out.jsonl"
    code, printed, err = augment(capsys, str(write_config(tmp_path / "a.yaml", output={"path": str(out)}, **base)))
    assert code == 0, err
    summary = json.loads(printed)
    assert summary["skipped_empty"] == 2 and summary["truncated"] == 1 and summary["sentences"] == 2
    assert max(len(r["anchor"].split()) for r in read_jsonl(out)) == 10

    def fails(name: str, match: str, *overrides: str, **raw) -> None:
        cfg = write_config(tmp_path / f"{name}.yaml", **{"output": {"path": str(tmp_path / f"{name}.jsonl")}, **base, **raw})
        code, _, err = augment(capsys, str(cfg), *overrides)
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err

    fails("bert", "not a sequence-to-sequence translation model", views=[
        {"type": "backtranslation", "pivots": [{"forward": str(_bert(tmp_path)), "backward": str(_bert(tmp_path))}]}])
    fails("missing_model", "not a transformers model folder", views=[
        {"type": "backtranslation", "pivots": [{"forward": str(tmp_path / "nope"), "backward": str(tmp_path / "nope")}]}])
    fails("pair", "apt-get install apertium-eng-zzz", views=[
        {"type": "backtranslation", "backend": "apertium", "pivots": [{"forward": "eng-zzz"}]}])
    fails("wordnet", "apt-get install wordnet-base", views=[{"type": "synonym", "wordnet_dir": str(tmp_path)}])
    fails("unknown", "views[0].typ: unknown key (did you mean 'type'?)", views=[{"typ": "swap"}])
    fails("p", "views[0].p: 2.0 is out of range; it must be > 0 and <= 1", views=[{"type": "swap", "p": 2}])
    fails("nopivots", "needs pivots", views=[{"type": "backtranslation"}])
    empty = tmp_path / "blank_input.jsonl"
    empty.write_text(json.dumps({"sentence": " "}) + "\n" + json.dumps({"sentence": ""}) + "\n")
    fails("empty", "no sentences to augment", f"data.path={empty}")


def _bert(tmp_path: Path) -> Path:
    from mmssl.data.text_views.tiny import build_tiny_bert

    folder = tmp_path / "bert"
    if not folder.exists():
        build_tiny_bert(folder, ["a red circle"], masked_lm=False)
    return folder
