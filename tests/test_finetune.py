"""`mmssl finetune`: a probe + full fine-tune at two label fractions on a tiny exported encoder (the curve, the
random-init anchor, the probe equal to `mmssl eval`'s, loadable classifiers), and one clear refusal per bad input,
with nothing written or lost."""

from __future__ import annotations

import json

import pytest
import torch
from clirun import assert_clear_error, mmssl_here, tree_hashes, write_recipe
from image_ssl_recipes import TINY_RESNET, image_recipe
from PIL import Image

from mmssl.config import ModelConfig
from mmssl.data.image_sources import load_images
from mmssl.data.label_fraction import labelled_rows
from mmssl.eval.frozen_backbone import ProbeSettings, frozen_backbone_metrics
from mmssl.finetune import load_classifier
from mmssl.models.image_features import image_features
from mmssl.models.vision import build_backbone, load_backbone
from mmssl.objectives.image_ssl import EVAL_FILE
from mmssl.recipes import parse_recipe, read_yaml


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An image SSL output folder as `mmssl train` leaves it (recipe, exported backbone, eval meta), made without
    training: finetune only needs the encoder and the recipe's data."""
    folder = tmp_path_factory.mktemp("ft") / "run"
    raw = image_recipe(folder, "simclr")
    raw["data"]["world"]["num_scenes"] = 120
    folder.mkdir()
    write_recipe(folder / "recipe.yaml", raw)
    torch.manual_seed(0)
    build_backbone(ModelConfig(arch="resnet18", config=dict(TINY_RESNET))).save(folder, image_size=16)
    (folder / EVAL_FILE).write_text(json.dumps({"class_names": ["circle", "square", "triangle", "cross"],
                                                "image_size": 16}))
    return folder


def _finetune(source, out, *extra):
    return mmssl_here("finetune", str(source), "--out", str(out), *extra)


@pytest.mark.slow
def test_probe_and_full_fine_tune_at_two_fractions_against_random_init(tiny_run, tmp_path):
    out = tmp_path / "ft"
    done = _finetune(tiny_run, out, "--labels", "0.25,1", "--steps", "8", "--batch-size", "16", "--lr", "3e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "finetune.json").read_text())
    rows = {(r["init"], r["mode"], r["fraction"]): r for r in results["results"]}
    assert set(rows) == {(i, m, f) for i in ("pretrained", "random_init") for m in ("probe", "full") for f in (0.25, 1.0)}
    recipe = parse_recipe(read_yaml(tiny_run / "recipe.yaml"))
    splits = load_images(recipe.data, 16, 0)
    keep = labelled_rows(splits.train.labels, 0.25, seed=0)
    assert rows["pretrained", "probe", 0.25]["labelled"] == int(keep.sum()) < rows["pretrained", "probe", 1.0]["labelled"]
    # the 100 % probe of the pretrained encoder is `mmssl eval`'s linear probe, to the digit
    model = load_classifier(out / "models" / "pretrained-probe-100pct")
    settings = ProbeSettings(16, model.backbone.mean, model.backbone.std, num_classes=4, seed=0)
    evaluated = frozen_backbone_metrics(load_backbone(tiny_run), splits.train, splits.eval, settings, torch.device("cpu"))
    assert rows["pretrained", "probe", 1.0]["top1"] == pytest.approx(evaluated["linear_probe_top1"])
    # every saved classifier (backbone in its library's format + head) predicts what was reported
    for (init, mode, fraction), row in rows.items():
        assert ("model" in row) == (init == "pretrained")
        if init != "pretrained":
            continue
        clf = load_classifier(out / row["model"])
        assert clf.class_names == ["circle", "square", "triangle", "cross"]
        with torch.no_grad():
            logits = clf.head(image_features(clf.backbone, splits.eval.images, settings, torch.device("cpu")))
        accuracy = float((logits.argmax(1) == splits.eval.labels).float().mean())
        assert accuracy == pytest.approx(row["top1"], abs=1.5 / len(splits.eval.labels)), (init, mode, fraction)
    for fraction in (0.25, 1.0):  # the fine-tune learns: its loss goes down
        row = rows["pretrained", "full", fraction]
        assert row["steps"] == 8 and row["last_loss"] < row["first_loss"]
    # a rerun replaces its own earlier output only when asked, and never with files it did not write in it
    assert_clear_error(_finetune(tiny_run, out, "--labels", "1", "--mode", "probe"), "--overwrite")
    (out / "notes.txt").write_text("mine")
    assert_clear_error(_finetune(tiny_run, out, "--labels", "1", "--overwrite"), "notes.txt", "would lose")
    (out / "notes.txt").unlink()
    done = _finetune(tiny_run, out, "--labels", "1", "--mode", "probe", "--init", "pretrained", "--overwrite")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["mode"] for r in json.loads((out / "finetune.json").read_text())["results"]] == ["probe"]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["pretrained-probe-100pct"]


def _table(root, labels):
    """A csv of tiny images with the given string labels (and a flat folder of the same images)."""
    root.mkdir()
    lines = ["image,label"]
    for i, label in enumerate(labels):
        Image.new("RGB", (8, 8), (40 * i % 255, 0, 0)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{label}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


@pytest.mark.parametrize("case, needles", [
    ("missing", ["is not a folder"]),
    ("out_is_input", ["--out", "is also the input"]),
    ("out_inside_input", ["--out", "lies inside the input"]),
    ("foreign_out", ["--out", "was not written by this mmssl command"]),
    ("empty_class", ["label fraction 0.01 leaves class(es)", "'circle'"]),
    ("no_labels", ["carry no class labels", "--label-column"]),
    ("no_label_column", ["--label-column names ['kind']"]),
    ("class_not_in_data", ["--classes names ['bird']", "no labelled training image"]),
    ("label_not_in_classes", ["label 'dog' is not one of the class names"]),
    ("export_without_data", ["--data"]),
    ("text_model", ["SentenceTransformer"]),
])
def test_bad_input_is_one_clear_message_and_nothing_is_written(tiny_run, tmp_path, case, needles):
    out = tmp_path / "out"
    before = tree_hashes(tiny_run)
    args = {"missing": [str(tmp_path / "nope"), "--out", str(out)],
            "out_is_input": [str(tiny_run), "--out", str(tiny_run)],
            "out_inside_input": [str(tiny_run), "--out", str(tiny_run / "ft")],
            "empty_class": [str(tiny_run), "--out", str(out), "--labels", "0.01,1"]}.get(case)
    if case == "foreign_out":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
        args = [str(tiny_run), "--out", str(out)]
    elif case in ("no_labels", "no_label_column", "class_not_in_data", "label_not_in_classes"):
        table = _table(tmp_path / "data", ["cat", "dog"] * 12)
        extra = {"no_labels": ["--data", str(tmp_path / "flat")],
                 "no_label_column": ["--data", str(table), "--label-column", "kind"],
                 "class_not_in_data": ["--data", str(table), "--classes", "cat,dog,bird"],
                 "label_not_in_classes": ["--data", str(table), "--classes", "cat,bird"]}[case]
        if case == "no_labels":
            (tmp_path / "flat").mkdir()
            for i in range(24):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "flat" / f"{i}.png")
        args = [str(tiny_run), "--out", str(out), *extra]
    elif case == "export_without_data":
        export = tmp_path / "export"
        export.mkdir()
        for name in ("model.safetensors", "config.json", "mmssl_backbone.json", EVAL_FILE):
            (export / name).write_bytes((tiny_run / name).read_bytes())
        args = [str(export), "--out", str(out)]
    elif case == "text_model":
        (tmp_path / "st").mkdir()
        (tmp_path / "st" / "modules.json").write_text("[]")
        args = [str(tmp_path / "st"), "--out", str(out)]
    assert_clear_error(mmssl_here("finetune", *args), *needles)
    assert tree_hashes(tiny_run) == before
    if case == "foreign_out":
        assert (out / "mine.txt").read_text() == "keep me" and [p.name for p in out.iterdir()] == ["mine.txt"]
    elif case not in ("out_is_input", "out_inside_input"):
        assert not out.exists()
    assert not any(p.name.startswith(".out.mmssl") for p in tmp_path.iterdir())
