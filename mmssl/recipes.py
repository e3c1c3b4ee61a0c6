"""Recipes: YAML loading, dotted ``key=value`` overrides, the objective's parameters resolved through the
registry, and saving the resolved recipe. The schema itself is `mmssl.config` (re-exported here)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

import re

from mmssl.config import (DataConfig, ModelConfig, ObjectiveEntry, ObjectiveParams, PushConfig, Recipe,
                          TokenizerConfig, TrainConfig, WorldConfig)
from mmssl.errors import RecipeError
from mmssl.registry import get_objective, objective_names
from mmssl.schema import from_dict, to_dict

__all__ = ["DataConfig", "ModelConfig", "ObjectiveParams", "PushConfig", "Recipe", "TokenizerConfig", "TrainConfig",
           "WorldConfig", "apply_overrides", "load_recipe", "parse_recipe", "read_yaml", "recipe_to_dict",
           "save_recipe"]


_ENTRY_KEYS = ("label", "weight", "share", "data")  # keys of an `objectives:` item that are not the method's
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# names of a run folder's own entries: an objective's output folder (and checkpoint folder) cannot take them
_RESERVED = {"checkpoints", "tracking", "report", "recipe.yaml", "metrics.json", "log.jsonl", "model.safetensors",
             "optimizer.bin", "trainer_state.json"}


def _parse_objective(raw: Any, where: str = "objective") -> ObjectiveParams:
    if not isinstance(raw, dict) or "name" not in raw:
        raise RecipeError(
            f"{where}.name: required key is missing; choose one of {', '.join(map(repr, objective_names()))}"
        )
    raw = dict(raw)
    name = raw["name"]
    if name not in objective_names():
        hint = difflib.get_close_matches(str(name), objective_names(), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise RecipeError(
            f"{where}.name: unknown objective {name!r}{extra}; choose one of {', '.join(map(repr, objective_names()))}"
        )
    return from_dict(get_objective(name).Params, raw, where)


def _parse_objectives(raw: Any) -> list[ObjectiveEntry]:
    """The `objectives:` list of a combined recipe: each item is an objective's keys plus label, weight, share
    and data; labels (default: the objective's name) must be distinct."""
    if not isinstance(raw, list) or not raw:
        raise RecipeError("objectives: expected a non-empty list of objectives, e.g. [{name: mlm}, {name: simcse}]")
    entries: list[ObjectiveEntry] = []
    for index, item in enumerate(raw):
        where = f"objectives[{index}]"
        if not isinstance(item, dict):
            raise RecipeError(f"{where}: expected a mapping with at least a name, got {item!r}")
        keys = {k: item[k] for k in _ENTRY_KEYS if k in item}
        params = _parse_objective({k: v for k, v in item.items() if k not in _ENTRY_KEYS}, where)
        keys.setdefault("label", params.name)
        entry = from_dict(ObjectiveEntry, {**keys, "params": {}}, where)
        entry.params = params
        if entry.label in _RESERVED:
            raise RecipeError(f"{where}.label: {entry.label!r} names a file or folder of the run itself; choose another "
                              f"label (e.g. {entry.label}_objective)")
        if not isinstance(entry.label, str) or not _LABEL.match(entry.label):
            raise RecipeError(f"{where}.label: {entry.label!r} is not a usable label (it names the objective's output "
                              "folder and logged metrics): use letters, digits, '_', '-' or '.'")
        clash = next((e for e in entries if e.label == entry.label), None)
        if clash is not None:
            raise RecipeError(f"{where}: the label {entry.label!r} is already used by objectives[{entries.index(clash)}]; "
                              f"give each objective a distinct label, e.g. label: {entry.label}_2")
        entries.append(entry)
    with_share = [i for i, e in enumerate(entries) if e.share is not None]
    if with_share and len(with_share) < len(entries):
        missing = next(i for i in range(len(entries)) if i not in with_share)
        raise RecipeError(f"objectives[{with_share[0]}].share is set but objectives[{missing}].share is not: give every "
                          "objective a share, or none (the shares then follow the sizes of their training data)")
    return entries


def parse_recipe(raw: Any) -> Recipe:
    """Validate a plain dict (as read from YAML) into a `Recipe`."""
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe: expected a mapping at the top level, got {type(raw).__name__}")
    raw = dict(raw)
    if "objectives" in raw:
        if "objective" in raw:
            raise RecipeError("recipe: both objective and objectives are set; use objective for one method or "
                              "objectives for several, not both")
        entries = _parse_objectives(raw.pop("objectives"))
        if raw.get("push_to_hub"):
            raise RecipeError("push_to_hub: a combined recipe writes one model folder per objective; drop push_to_hub "
                              "and publish the folder you want after training: mmssl push OUTPUT_DIR/<label> --repo-id ...")
        recipe = from_dict(Recipe, {**raw, "objective": {}})
        recipe.objectives = entries
        recipe.objective = ObjectiveParams(name="+".join(e.label for e in entries))
        return recipe
    if "mixing" in raw:
        raise RecipeError("mixing: combines several objectives; list them under objectives: (or remove mixing)")
    objective = _parse_objective(raw.pop("objective", None))
    recipe = from_dict(Recipe, {**raw, "objective": {}})
    recipe.objective = objective
    return recipe


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) to a raw recipe dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.batch_size=16")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):  # objectives.<label or index>.key
                child = _list_item(node, part, item, ".".join(parts[:depth]))
            else:
                child = node.setdefault(part, {})
            if not isinstance(child, (dict, list)):
                raise RecipeError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        if isinstance(node, list):
            raise RecipeError(f"override {item!r}: {'.'.join(parts[:-1])} is a list; name one of its items, e.g. "
                              f"{'.'.join(parts[:-1])}.{_labels(node)[0] if _labels(node) else 0}.KEY=VALUE")
        node[parts[-1]] = value
    return raw


def _labels(items: list) -> list[str]:
    return [str(i.get("label", i.get("name"))) for i in items if isinstance(i, dict)]


def _list_item(items: list, part: str, override: str, where: str) -> Any:
    """The item of a recipe list (``objectives``) an override names: by label (or name), or by index."""
    for entry in items:
        if isinstance(entry, dict) and str(entry.get("label", entry.get("name"))) == part:
            return entry
    if part.isdigit() and int(part) < len(items):
        return items[int(part)]
    raise RecipeError(f"override {override!r}: {where} has no item {part!r}; name one of "
                      f"{', '.join(map(repr, _labels(items)))} or an index below {len(items)}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist; pass the path of a YAML recipe (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {str(path)!r} is not valid YAML: {exc}") from None
    return raw or {}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply overrides and validate it."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return parse_recipe(raw)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain data; a combined recipe lists its objectives flat (as written) and has no `objective`."""
    data = to_dict(recipe)
    entries = data.pop("objectives")
    if entries is None:
        data.pop("mixing")
        return data
    data.pop("objective")
    data["objectives"] = [{**entry.pop("params"), **{k: v for k, v in entry.items() if v is not None}}
                          for entry in entries]
    return data


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (every default filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), encoding="utf-8")
