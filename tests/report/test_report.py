"""`mmssl report`: the page renders for each kind of output the shipped recipes produce (LM, sentence embedding,
image encoder, CLIP, combined), every embedded image is a valid, non-blank PNG, several runs overlay, and a
folder that is not a report is refused untouched."""

from __future__ import annotations

import base64
import io
import re

import pytest
from clirun import assert_clear_error, mmssl, tree_hashes
from helpers import TINY_BERT, lm_recipe
from PIL import Image, ImageStat

from mmssl.recipes import parse_recipe
from mmssl.report.page import write_report
from mmssl.train.loop import train

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}


def recipes(root) -> dict[str, dict]:
    fast = {"max_steps": 4, "log_every": 1, "eval_every": 2, "progress": False, "cpu": True}
    text = {"source": "world", "world": {"num_scenes": 200}}
    return {
        "mlm": {**lm_recipe(root / "mlm", "mlm"), "train": {"batch_size": 8, **fast}},
        "simcse": {"output_dir": str(root / "simcse"), "data": text, "tokenizer": {"vocab_size": 300},
                   "model": {"arch": "bert", "config": TINY_BERT},
                   "objective": {"name": "simcse", "mode": "unsupervised", "max_length": 24, "eval_max_pairs": 64},
                   "train": {"batch_size": 16, **fast}},
        "simclr": {"output_dir": str(root / "simclr"),
                   "data": {"source": "world", "world": {"num_scenes": 120, "image_size": 16, "pair_fraction": 0.0}},
                   "model": {"arch": "resnet18", "config": {"channels": [8, 8, 16, 16], "small_stem": True}},
                   "objective": {"name": "simclr", "image_size": 16, "projection_dim": 16, "hidden_dim": 32,
                                 "eval_max_images": 100, "eval_before": False, "linear_probe": False},
                   "train": {"batch_size": 16, **fast}},
        "clip": {"output_dir": str(root / "clip"),
                 "data": {"source": "world", "world": {"num_scenes": 160, "num_colours": 2, "num_shapes": 2}},
                 "model": {"arch": "mmssl-vit-tiny", "config": TINY_CLIP}, "objective": {"name": "clip"},
                 "train": {"batch_size": 32, **fast}},
        "combined": {**{k: v for k, v in lm_recipe(root / "combined", "mlm").items() if k != "objective"},
                     "objectives": [{"name": "mlm", "max_length": 24},
                                    {"name": "simcse", "mode": "unsupervised", "max_length": 24, "eval_max_pairs": 64}],
                     "train": {"batch_size": 8, **fast}},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for raw in recipes(root).values():
        train(parse_recipe(raw))
    return root


def embedded_pngs(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.mark.slow
@pytest.mark.parametrize("kind, expected", [
    ("mlm", {"loss", "learning_rate", "eval"}),
    ("simcse", {"loss", "eval", "alignment_uniformity", "similarities", "spectrum"}),
    ("simclr", {"loss", "eval", "spectrum"}),
    ("clip", {"loss", "eval", "similarities", "spectrum", "confusion"}),
    ("combined", {"loss", "eval", "alignment_uniformity", "similarities", "spectrum"}),
])
def test_the_report_renders_every_figure_of_each_kind_as_a_real_png(runs, tmp_path, kind, expected):
    page_path = write_report([runs / kind], tmp_path / "report")
    page = page_path.read_text()
    figures = {p.stem for p in page_path.parent.glob("*.png")}
    assert all(any(f == e or f.startswith(e + "_") for f in figures) for e in expected), figures
    images = embedded_pngs(page)
    assert len(images) == len(figures)
    for image in images:
        image.load()  # a complete, decodable PNG
        assert image.format == "PNG" and image.width > 200 and image.height > 150
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 5  # not blank: lines, bars, text


@pytest.mark.slow
def test_several_runs_overlay_and_a_foreign_folder_is_refused_untouched(runs, tmp_path):
    page = write_report([runs / "mlm", runs / "combined"], tmp_path / "both").read_text()
    assert "<td>mlm</td>" in page and "<td>combined</td>" in page and "mlm+simcse" in page
    rerun = write_report([runs / "mlm"], tmp_path / "both")  # a report folder is the report's to replace
    assert "<td>combined</td>" not in rerun.read_text()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    before = tree_hashes(foreign)
    assert_clear_error(mmssl("report", str(runs / "mlm"), "--out", str(foreign)), "not written by mmssl report")
    assert tree_hashes(foreign) == before
    assert_clear_error(mmssl("report", str(tmp_path / "nowhere")), "not an mmssl output folder")
