from pathlib import Path

import pytest
import yaml

from mmssl.errors import RecipeError
from mmssl.recipes import apply_overrides, load_recipe, parse_recipe, save_recipe, recipe_to_dict

ALL_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
CONFIGS = [p for p in ALL_CONFIGS if not p.name.startswith(("mine_", "augment_", "curate_"))]
MINING = [p for p in ALL_CONFIGS if p.name.startswith("mine_")]


def base() -> dict:
    return {"output_dir": "out", "objective": {"name": "mlm"}, "model": {"arch": "bert"}}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.objective.name


@pytest.mark.parametrize("path", MINING, ids=[p.name for p in MINING])
def test_shipped_mining_configs_validate(path):
    from mmssl.mining.config import load_mining_config

    assert load_mining_config(path).num_negatives >= 1


def test_defaults_filled_and_typed():
    recipe = parse_recipe(base())
    assert recipe.train.batch_size == 32
    assert recipe.objective.mask_probability == 0.15
    assert recipe.data.source == "world"


def test_unknown_key_names_dotted_path_and_suggestion():
    raw = base()
    raw["train"] = {"batch_szie": 4}
    with pytest.raises(RecipeError, match=r"train\.batch_szie: unknown key \(did you mean 'batch_size'\?\)"):
        parse_recipe(raw)


def test_unknown_objective_key_is_rejected():
    raw = base()
    raw["objective"]["mask_prob"] = 0.2
    with pytest.raises(RecipeError, match=r"objective\.mask_prob: unknown key.*mask_probability"):
        parse_recipe(raw)


def test_wrong_type_and_literal_values():
    raw = base()
    raw["train"] = {"batch_size": "many"}
    with pytest.raises(RecipeError, match=r"train\.batch_size: expected an integer, got 'many'"):
        parse_recipe(raw)
    raw["train"] = {"scheduler": "cosin"}
    with pytest.raises(RecipeError, match=r"'linear', 'cosine', 'constant'.*did you mean 'cosine'"):
        parse_recipe(raw)


def test_missing_required_fields():
    with pytest.raises(RecipeError, match=r"output_dir: required key is missing"):
        parse_recipe({"objective": {"name": "mlm"}})
    with pytest.raises(RecipeError, match=r"objective.name: required key is missing; choose one of .*'clm'.*'mlm'"):
        parse_recipe({"output_dir": "x", "objective": {}})


def test_unknown_objective_lists_choices():
    with pytest.raises(RecipeError, match=r"unknown objective 'mlx' \(did you mean 'mlm'\?\); choose one of"):
        parse_recipe({"output_dir": "x", "objective": {"name": "mlx"}})


def test_value_checks_name_the_key():
    raw = base()
    raw["objective"]["mask_probability"] = 1.5
    with pytest.raises(RecipeError, match=r"objective.mask_probability: 1.5 is out of range; it must be > 0 and < 1"):
        parse_recipe(raw)
    raw = base()
    raw["data"] = {"source": "files"}
    with pytest.raises(RecipeError, match=r"data: path is required when source is .files."):
        parse_recipe(raw)


def test_overrides_parse_yaml_values_and_create_sections():
    raw = apply_overrides(base(), ["train.batch_size=8", "train.trackers=[tensorboard]", "model.config.hidden_size=64",
                                   "train.cpu=true", "objective.max_length=16"])
    recipe = parse_recipe(raw)
    assert recipe.train.batch_size == 8 and recipe.train.cpu is True
    assert recipe.train.trackers == ["tensorboard"]
    assert recipe.model.config == {"hidden_size": 64}
    assert recipe.objective.max_length == 16
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_overrides(base(), ["train.batch_size"])
    with pytest.raises(RecipeError, match="train.batch_size is not a section"):
        apply_overrides({"train": {"batch_size": 3}}, ["train.batch_size.x=1"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = parse_recipe(apply_overrides(base(), ["train.max_steps=7"]))
    save_recipe(recipe, tmp_path / "recipe.yaml")
    again = load_recipe(tmp_path / "recipe.yaml")
    assert recipe_to_dict(again) == recipe_to_dict(recipe)
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["train"]["max_steps"] == 7


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def _numeric_keys_without_range(cls, path: str, seen: set) -> list[str]:
    import dataclasses
    import typing

    from mmssl.schema import range_of

    if cls in seen:
        return []
    seen.add(cls)
    missing = []
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        key = f"{path}.{name}" if path else name
        inner = [tp]
        while inner:
            t = inner.pop()
            origin, args = typing.get_origin(t), typing.get_args(t)
            if origin is typing.Annotated:
                base = args[0]
                if base in (int, float) and range_of(t) is None:
                    missing.append(key)
                continue
            if t in (int, float):
                missing.append(key)
            elif dataclasses.is_dataclass(t):
                missing += _numeric_keys_without_range(t, key, seen)
            else:
                inner += [a for a in args if a is not type(None)]
    return missing


def test_every_numeric_key_has_an_allowed_range():
    """Nonsense numbers (warmup_ratio=5, save_every=-1, ...) are refused by the schema, for every config."""
    from mmssl.data.text_views.config import AugmentConfig
    from mmssl.mining.config import MiningConfig
    from mmssl.recipes import Recipe
    from mmssl.registry import get_objective, objective_names

    seen: set = set()
    missing = _numeric_keys_without_range(Recipe, "", seen) + _numeric_keys_without_range(MiningConfig, "mine", seen)
    missing += _numeric_keys_without_range(AugmentConfig, "augment", seen)
    for name in objective_names():
        missing += _numeric_keys_without_range(get_objective(name).Params, f"objective[{name}]", seen)
    assert len(seen) > 15  # the walk reached the nested sections
    assert missing == []


@pytest.mark.parametrize("override, message", [  # (the CLI cases are in tests/reliability/test_train_outputs.py)
    ("train.learning_rate=.nan", "train.learning_rate: expected a finite number"),
    ("train.epochs=.inf", "train.epochs: expected a finite number"),
    ("train.adam_betas=[0.9,1.5]", "train.adam_betas[1]: 1.5 is out of range; it must be >= 0 and < 1"),
    ("data.eval_fraction=1", "data.eval_fraction: 1.0 is out of range; it must be >= 0 and < 1"),
    ("train.max_grad_norm=-1", "train.max_grad_norm: -1.0 is out of range; it must be > 0"),
    ("seed=-3", "seed: -3 is out of range"),
])
def test_out_of_range_values_name_the_key_and_the_range(override, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(ALL_CONFIGS[0].parent / "mlm_world.yaml", [override])
    assert str(info.value) == message or str(info.value).startswith(message)
