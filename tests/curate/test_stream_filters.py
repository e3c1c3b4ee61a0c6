"""``data.curate``: a training recipe filters its stream on the fly with the per-sample curate filters; every
dropped record is counted under ``curate <filter>``, the kept ones reach the objective unchanged."""

from __future__ import annotations

import json
import pickle

import pytest
from curate_samples import SAMPLES
from helpers import lm_recipe

from mmssl.curate.filter_config import CaptionFilter, ImageFilter, LanguageFilter, StreamFilters, TextFilter
from mmssl.data.curated_stream import CuratedTransform
from mmssl.data.streaming import Skip, Transform
from mmssl.errors import RecipeError
from mmssl.recipes import parse_recipe

ENGLISH = [f"the {w} committee met on day {i} and approved a new plan for the city library" for i, w in
           enumerate(["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"] * 5)]
SPANISH = [f"el comité se reunió el día {i} y aprobó un nuevo plan para la biblioteca de la ciudad" for i in range(10)]
SHORT = ["ok", "thanks a lot", "see you", "yes", "no way"]


class Keep(Transform):
    def __call__(self, record):
        return [record]


def test_each_filter_drops_its_records_and_the_transform_pickles_for_workers():
    filters = StreamFilters(caption=CaptionFilter(), image=ImageFilter(),
                            language=LanguageFilter(keep=["en"], expected=["en", "es", "fr", "de"]))
    transform = pickle.loads(pickle.dumps(CuratedTransform(Keep(), filters, {})))  # as a loader worker gets it
    verdicts = {}
    for i, (caption, image, why) in enumerate(SAMPLES):
        record = {"__key__": str(i), "txt": caption.encode(), "png": image}
        try:
            transform(record)
            verdicts[i] = None
        except Skip as reason:
            verdicts[i] = str(reason)
    expected = {i: f"curate {why}" if why in ("caption", "image", "language") else None
                for i, (_, _, why) in enumerate(SAMPLES)}
    assert verdicts == expected  # duplicates and the undecodable image pass: the objective's transform decides


def test_an_mlm_run_counts_what_its_stream_filters_dropped(tmp_path):
    from mmssl.train.loop import train

    lines = ENGLISH + SPANISH + SHORT
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    raw = lm_recipe(tmp_path / "run", max_steps=6, num_workers=1)
    corpus = str(tmp_path / "corpus.jsonl")
    raw["data"] = {"source": "files", "path": corpus, "eval_path": corpus, "shuffle_buffer": 0,
                   "curate": {"text": {"min_words": 4}, "language": {"keep": ["en"], "expected": ["en", "es"]}}}
    metrics = train(parse_recipe(raw))
    skipped = metrics["skipped_samples"]
    assert set(skipped) == {"curate text", "curate language"}
    passes = skipped["curate text"] / len(SHORT)
    assert passes >= 1 and skipped["curate language"] == pytest.approx(passes * len(SPANISH), abs=len(SPANISH))


def test_stream_filters_are_checked_and_need_a_stream(tmp_path):
    raw = lm_recipe(tmp_path / "run")
    raw["data"]["curate"] = {"langauge": {"keep": ["en"]}}
    with pytest.raises(RecipeError, match=r"data\.curate\.langauge: unknown key \(did you mean 'language'\?\)"):
        parse_recipe(raw)
    raw["data"]["curate"] = {"text": {"min_words": 3}}
    raw["data"]["streaming"] = False
    from mmssl.train.loop import train

    with pytest.raises(RecipeError, match="data.curate filters the stream.*set data.streaming to true or auto"):
        train(parse_recipe(raw))
    assert TextFilter().min_words == 5
