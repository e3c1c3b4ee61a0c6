"""`mmssl report` on `mmssl finetune` outputs: the label-efficiency curve (top-1 against the label fraction, log x;
pretrained vs random init, probe vs full fine-tune) as a real PNG, one output or several overlaid, and the run
table lists the numbers."""

from __future__ import annotations

import io
import json

from clirun import assert_clear_error, mmssl_here
from PIL import Image, ImageStat

from mmssl.report.figures import finetune_points
from mmssl.report.page import write_report
from mmssl.report.runs import load_run


def finetune_output(folder, shift: float = 0.0):
    folder.mkdir(parents=True)
    results = [{"init": init, "mode": mode, "fraction": f, "labelled": int(f * 4000),
                "top1": min(1.0, base + gain * (i + 1) + shift)}
               for init, base in (("pretrained", 0.6), ("random_init", 0.3))
               for mode, gain in (("probe", 0.05), ("full", 0.1)) for i, f in enumerate((0.01, 0.1, 1.0))]
    (folder / "finetune.json").write_text(json.dumps({
        "mmssl": "finetune", "class_names": ["circle", "square", "triangle", "cross"], "results": results,
        "reference": {"linear_probe_top1": 0.75}, "settings": {"steps": 300}, "seconds": 12.0}))
    return folder


def test_the_label_efficiency_curve_is_drawn_from_a_finetune_output(tmp_path):
    out = finetune_output(tmp_path / "ft")
    run = load_run(out)
    points = finetune_points(run)
    assert set(points) == {(i, m) for i in ("pretrained", "random_init") for m in ("probe", "full")}
    assert [f for f, _ in points["pretrained", "full"]] == [0.01, 0.1, 1.0]
    assert points["random_init", "probe"][0][1] == 0.3 + 0.05
    page = write_report([out], tmp_path / "report")
    png = (page.parent / "label_efficiency.png").read_bytes()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > 300 and max(ImageStat.Stat(image.convert("L")).stddev) > 5
    text = page.read_text()
    assert 'id="label_efficiency"' in text and "pretrained full 1%: 0.7" in text and "random_init probe 100%: 0.45" in text


def test_several_finetune_outputs_overlay_and_a_folder_without_results_is_refused(tmp_path):
    a, b = finetune_output(tmp_path / "seed0"), finetune_output(tmp_path / "seed1", shift=0.02)
    single = Image.open(io.BytesIO(write_report([a], tmp_path / "one").with_name("label_efficiency.png").read_bytes()))
    both = Image.open(io.BytesIO(write_report([a, b], tmp_path / "two").with_name("label_efficiency.png").read_bytes()))
    assert both.convert("RGB").getcolors(1 << 20) != single.convert("RGB").getcolors(1 << 20)  # more lines drawn
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "finetune.json").write_text(json.dumps({"something": "else"}))
    assert_clear_error(mmssl_here("report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")), "no log.jsonl")
    assert not (tmp_path / "r").exists()
