"""`mmssl curate` on tiny hand-made data with known faults: exact counts per filter, the input untouched, an
idempotent re-run, clear config errors, and curated shards that mmssl's own stream reader reads back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from curate_samples import EXPECTED, SAMPLES, curate_config, png, write_shards
from helpers import ROOT
from mmssl.config import DataConfig
from mmssl.curate import REPORT, curate, load_curate_config, parse_curate_config
from mmssl.curate.dedup import Exact, digest
from mmssl.curate.config import ExactDedup
from mmssl.curate.filters import boilerplate
from mmssl.errors import DataError, RecipeError


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    write_shards(root / "raw")
    before = _hashes(root / "raw")
    summary = curate(parse_curate_config(curate_config(root / "raw", root / "out")))
    return root, before, summary


def test_each_filter_drops_exactly_its_faulty_samples(curated):
    root, _, summary = curated
    assert summary["dropped"] == EXPECTED
    assert summary["read"] == len(SAMPLES) and summary["kept"] == len(SAMPLES) - sum(EXPECTED.values()) == 4
    report = json.loads((root / "out" / REPORT).read_text())
    examples = report["examples"]
    assert set(examples) == set(EXPECTED) and all(len(examples[k]) == n for k, n in EXPECTED.items())
    assert examples["language"][0]["reason"].startswith("language es")
    assert "file name" in examples["caption"][0]["reason"] and "boilerplate" in examples["caption"][1]["reason"]
    assert {e["reason"].split(" (")[0] for e in examples["image"]} == {"blank image", "image too small"}
    assert [e["reason"] for e in examples["exact_dedup"]] == ["same image as raw-0.tar/s000"] * 2
    assert examples["near_dedup"][0]["reason"].startswith("near-duplicate of raw-0.tar/s001")


def test_curated_shards_stream_back_through_mmssl_readers(curated):
    from mmssl.data.records import record_captions
    from mmssl.data.stream_sources import data_sources

    root, _, summary = curated
    (source,) = data_sources(DataConfig(source="files", path=str(root / "out"), streaming=True), "image_text")
    assert source.num_samples == 4  # from sizes.json
    records = [r for shard in source.shards for r in source.reader(shard)]
    assert len(source.shards) == summary["shards"] == 2  # shard_size 3
    assert [record_captions(r, {})[0] for r in records] == [c for c, _, why in SAMPLES if why is None]
    assert [json.loads(r["json"])["key"] for r in records] == ["raw-0.tar/s000", "raw-0.tar/s001",
                                                                "raw-0.tar/s003", "raw-1.tar/s102"]
    assert records[0]["png"] == SAMPLES[0][1]  # the original bytes


def test_input_untouched_rerun_idempotent_and_wrong_outputs_refused(curated, tmp_path):
    root, before, summary = curated
    assert _hashes(root / "raw") == before
    written = _hashes(root / "out")
    again = curate(parse_curate_config(curate_config(root / "raw", root / "out")))
    assert again["unchanged"] and again["kept"] == summary["kept"]
    assert _hashes(root / "out") == written
    with pytest.raises(DataError, match="curated from other input or settings"):
        curate(parse_curate_config(curate_config(root / "raw", root / "out", near_dedup=None)))
    with pytest.raises(RecipeError, match="mmssl never writes over its own inputs"):
        curate(parse_curate_config(curate_config(root / "raw", root / "raw" / "curated")))
    with pytest.raises(DataError, match=r"input\.path '.*nothing': no such file"):
        curate(parse_curate_config(curate_config(tmp_path / "nothing", tmp_path / "never")))
    assert not (tmp_path / "never").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by mmssl curate"):
        curate(parse_curate_config(curate_config(root / "raw", tmp_path / "mine")))
    assert _hashes(root / "raw") == before


def test_an_interrupted_run_starts_over_but_foreign_files_are_kept(curated, tmp_path):
    from mmssl.curate.run import RUNNING

    root, _, summary = curated
    out = tmp_path / "out"
    out.mkdir()
    for name in (RUNNING, "curated-0000.tar", ".tmp-curated-0001.tar"):
        (out / name).write_bytes(b"half written")
    again = curate(parse_curate_config(curate_config(root / "raw", out)))
    assert again["kept"] == summary["kept"] and not (out / RUNNING).exists()
    assert sorted(p.name for p in out.iterdir()) == ["curate_report.html", REPORT, "curated-0000.tar",
                                                     "curated-0001.tar", "sizes.json"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / RUNNING).write_text("{}")
    (tmp_path / "other" / "thesis.tex").write_text("mine")
    with pytest.raises(DataError, match="not written by mmssl curate"):
        curate(parse_curate_config(curate_config(root / "raw", tmp_path / "other")))
    assert (tmp_path / "other" / "thesis.tex").read_text() == "mine"


def test_bad_config_keys_and_values_name_the_dotted_key(tmp_path):
    with pytest.raises(RecipeError, match=r"filters\.near_dedup\.treshold: unknown key \(did you mean 'threshold'\?\)"):
        parse_curate_config(curate_config(tmp_path, tmp_path / "o", near_dedup={"treshold": 0.5}))
    with pytest.raises(RecipeError, match=r"filters\.image\.max_aspect_ratio: 0\.5 is out of range; it must be >= 1"):
        parse_curate_config(curate_config(tmp_path, tmp_path / "o", image={"max_aspect_ratio": 0.5}))
    with pytest.raises(RecipeError, match=r"filters\.exact_dedup\.by: 'images' is not allowed.*did you mean 'image'"):
        parse_curate_config(curate_config(tmp_path, tmp_path / "o", exact_dedup={"by": "images"}))
    with pytest.raises(RecipeError, match=r"output_dir: required key is missing"):
        parse_curate_config({"input": {"source": "world"}})


def test_text_data_quality_language_and_duplicates(tmp_path):
    texts = [
        ("the committee approved the new budget for the city library", None),
        ("ok thanks", "text"),  # too short
        ("$$$ 1234 5678 ### 99.99 %%% !!!", "text"),  # mostly not letters
        ("el comité aprobó el nuevo presupuesto para la biblioteca de la ciudad", "language"),
        ("The committee approved the new budget for the city library.", "exact_dedup"),  # normalised: the same
        ("the committee approved the new budget for the city library today", "near_dedup"),
        ("heavy rain is expected across the northern valleys this weekend", None),
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in texts))
    cfg = curate_config(tmp_path / "in", tmp_path / "out")
    cfg["kind"] = "text"
    summary = curate(parse_curate_config(cfg))
    assert summary["dropped"] == {"text": 2, "language": 1, "exact_dedup": 1, "near_dedup": 1}
    assert summary["filters"] == ["text", "language", "exact_dedup", "near_dedup"]
    from mmssl.data.stream_sources import data_sources

    (source,) = data_sources(DataConfig(source="files", path=str(tmp_path / "out"), streaming=True), "text")
    lines = [r for shard in source.shards for r in source.reader(shard)]
    assert [line["text"] for line in lines] == [t for t, why in texts if why is None]


def test_exact_dedup_by_caption_either_and_pair():
    def dropped(by: str) -> list[bool]:
        exact = Exact(ExactDedup(by=by), "image_text")
        out = []
        for key, (image, caption) in enumerate([(b"a", "x"), (b"a", "y"), (b"b", "x"), (b"a", "x")]):
            hashes = Exact.hashes(image, caption)
            assert hashes == (digest(image), digest(caption))
            reason = exact.check(hashes)
            out.append(reason is not None)
            if reason is None:
                exact.add(str(key), hashes)
        return out

    assert dropped("image") == [False, True, False, True]
    assert dropped("caption") == [False, False, True, True]
    assert dropped("either") == [False, True, True, True]
    assert dropped("pair") == [False, False, False, True]


@pytest.mark.parametrize("caption", ["image", "Untitled", "IMG_1234.jpg", "DSC_0042", "photo-001.png",
                                     "Stock Photo - happy family", "click here to enlarge",
                                     "see https://example.com/x", "www.shop.net", "12345 !!", "N/A"])
def test_boilerplate_alt_text_is_recognised(caption):
    assert boilerplate(caption) is not None


@pytest.mark.parametrize("caption", ["a dog on the beach", "an image of a red car", "two people holding photos"])
def test_real_captions_are_not_boilerplate(caption):
    assert boilerplate(caption) is None


def test_command_and_shipped_world_config(curated, capsys, tmp_path):
    from mmssl.commands import main

    cfg = load_curate_config(ROOT / "configs" / "curate_world.yaml", ["output_dir=elsewhere"])
    assert cfg.output_dir == "elsewhere" and cfg.filters.language.expected == ["en", "es", "fr", "de"]
    root, _, _ = curated
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(curate_config(root / "raw", tmp_path / "out")))
    assert main(["curate", str(config), "filters.near_dedup=null"]) == 0
    printed = capsys.readouterr().out
    assert "kept 5 of 13" in printed and '"near_dedup"' not in printed.split("filters")[0]
    assert main(["curate", str(config), "filters.near_dedup=null"]) == 0
    assert "already done" in capsys.readouterr().out
    assert main(["curate", str(config), "filters.nope=1"]) == 2
    assert "filters.nope: unknown key" in capsys.readouterr().err


def test_images_kind_from_an_image_folder_keeps_labels(tmp_path):
    from mmssl.data.stream_sources import data_sources
    from mmssl.data.shards import json_member

    for label, name, data in (("cat", "a.png", png(11)), ("cat", "b.png", png(11)), ("dog", "c.png", png(None)),
                              ("dog", "d.png", png(12))):
        (tmp_path / "photos" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / label / name).write_bytes(data)
    cfg = {"input": {"source": "files", "path": str(tmp_path / "photos")}, "output_dir": str(tmp_path / "out"),
           "kind": "images"}
    summary = curate(parse_curate_config(cfg))
    assert summary["dropped"] == {"image": 1, "exact_dedup": 1} and summary["kept"] == 2
    assert summary["filters"] == ["image", "exact_dedup"]
    (source,) = data_sources(DataConfig(source="files", path=str(tmp_path / "out"), streaming=True), "images")
    assert [json_member(r)["label"] for shard in source.shards for r in source.reader(shard)] == ["cat", "dog"]


def test_hub_source_streams_through_datasets(tmp_path):
    """``input.source: hub`` reads with `datasets.load_dataset(..., streaming=True)` (here a local dataset folder,
    which `datasets` reads the same way; the Hub's HTTP side is tested in tests/data/test_streaming_hub.py)."""
    (tmp_path / "in").mkdir()
    lines = [f"note {i}: the river rose after {i} days of heavy rain in the valley" for i in range(6)] * 2
    (tmp_path / "in" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    cfg = {"input": {"source": "hub", "path": str(tmp_path / "in"), "split": "train"},
           "output_dir": str(tmp_path / "out"), "kind": "text", "filters": {"near_dedup": None}}
    summary = curate(parse_curate_config(cfg))
    assert summary["read"] == 12 and summary["kept"] == 6 and summary["dropped"] == {"exact_dedup": 6}
    written = [json.loads(line) for line in (tmp_path / "out" / "curated-0000.jsonl").read_text().splitlines()]
    assert [w["text"] for w in written] == lines[:6] and written[0]["key"].endswith("train/0")


def test_worker_processes_give_the_same_output_as_one_process(curated, tmp_path):
    """``workers: 2`` reads, decodes and filters the two shards in two forked processes; deduplication stays in
    the main one, in input order, so the curated shards and the report are the same, byte for byte."""
    root, _, summary = curated
    cfg = curate_config(root / "raw", tmp_path / "out")
    parallel = curate(parse_curate_config({**cfg, "workers": 2}))
    assert {**parallel, "output": None} == {**summary, "output": None}
    one, two = root / "out", tmp_path / "out"
    for name in ("curated-0000.tar", "curated-0001.tar", "sizes.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    strip = lambda report: {**report, "summary": {**report["summary"], "output": None}}  # noqa: E731
    assert strip(json.loads((one / REPORT).read_text())) == strip(json.loads((two / REPORT).read_text()))
