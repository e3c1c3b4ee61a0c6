"""Code that comes with a model or tokenizer folder never runs unless the recipe allows it: the real CLI is
given such folders, with "y" typed at any "[y/N]" prompt, and the code's marker file must stay absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import assert_clear_error, mmssl, write_recipe
from helpers import ROOT, lm_recipe

from mmssl.recipes import parse_recipe
from mmssl.train.loop import train

MARKER_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('custom code ran')\n"


def custom_code_folder(folder: Path, base: Path, marker: Path) -> Path:
    """A copy of a trained BERT folder whose config and tokenizer point at Python files of their own (auto_map),
    each of which writes `marker` when imported."""
    folder.mkdir()
    for path in base.iterdir():
        if path.is_file() and path.suffix in (".json", ".safetensors", ".txt"):
            (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil-bert", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                    "AutoModel": "modeling_evil.EvilModel",
                                                    "AutoModelForMaskedLM": "modeling_evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    for name in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (folder / f"{name}.py").write_text(MARKER_CODE.format(marker=str(marker)))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "run"
    train(parse_recipe(lm_recipe(out, "mlm", max_steps=2)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", ["model.pretrained", "tokenizer.path"])
def test_train_refuses_custom_code_even_when_y_is_typed(tmp_path, trained, key):
    marker = tmp_path / "ran"
    evil = custom_code_folder(tmp_path / "evil", trained, marker)
    raw = lm_recipe(tmp_path / "out", "mlm", max_steps=2)
    if key == "model.pretrained":
        raw["model"] = {"pretrained": str(evil)}
        raw["tokenizer"] = {"path": str(trained)}
    else:
        raw["tokenizer"] = {"path": str(evil)}
    done = mmssl("train", str(write_recipe(tmp_path / "r.yaml", raw)), stdin="y\ny\ny\n")
    allow = "model.trust_remote_code" if key == "model.pretrained" else "tokenizer.trust_remote_code"
    assert_clear_error(done, f"{key} {str(evil)!r} comes with custom code", f"set {allow}=true")
    assert not marker.exists()


@pytest.mark.slow
def test_dense_mining_refuses_custom_code(tmp_path, trained):
    marker = tmp_path / "ran"
    evil = custom_code_folder(tmp_path / "evil", trained, marker)
    done = mmssl("mine", str(ROOT / "configs/mine_world_bm25.yaml"), f"output={tmp_path / 'mined.jsonl'}",
                 "method=dense", f"dense.model={evil}", "data.world.num_scenes=60", stdin="y\ny\ny\n")
    assert_clear_error(done, f"dense.model {str(evil)!r} comes with custom code", "dense.trust_remote_code=true")
    assert not marker.exists()


@pytest.mark.slow
def test_the_model_card_names_an_allowed_custom_code_key(tmp_path, trained):
    from mmssl.hub import render_card

    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"].update(pretrained="org/custom-bert", trust_remote_code=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    card = render_card(run, "org/x")
    assert "the recipe set `model.trust_remote_code: true`, so the code that came with `org/custom-bert` was run" in card
    assert "trust_remote_code: true" not in render_card(trained, "org/y").split("```yaml")[0]
