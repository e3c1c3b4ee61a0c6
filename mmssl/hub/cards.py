"""Model and dataset cards: rendered from the templates in ``model_cards/`` (shipped as ``mmssl.model_cards``) and the
recipe and metrics of an output folder, and parsed before anything is uploaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mmssl.errors import MmsslError

if TYPE_CHECKING:
    from datasets import DatasetInfo

    from mmssl.objectives.base import ModelOutput


def card_templates() -> Path:
    """The folder of card templates (top-level ``model_cards/``, installed as ``mmssl.model_cards``)."""
    from importlib.resources import files

    return Path(str(files("mmssl.model_cards")))


def model_output(directory: Path) -> ModelOutput:
    """What an mmssl output folder holds, as its objective declares it (`Objective.output`)."""
    from mmssl.registry import get_objective, objective_names

    if not (directory / "recipe.yaml").is_file() or not (directory / "metrics.json").is_file():
        raise MmsslError(f"{str(directory)!r} is not a finished mmssl output folder (needs recipe.yaml and "
                         "metrics.json); pass the output_dir of a completed `mmssl train` run")
    recipe = yaml.safe_load((directory / "recipe.yaml").read_text()) or {}
    if recipe.get("objectives"):
        folders = ", ".join(str(directory / e.get("label", e.get("name"))) for e in recipe["objectives"])
        raise MmsslError(f"{str(directory)!r} is a combined run: each of its objectives has its own model folder "
                         f"({folders}); push one of those")
    name = (recipe.get("objective") or {}).get("name")
    if name not in objective_names():
        raise MmsslError(f"{str(directory)!r} was trained with objective {name!r}, which this mmssl does not know; "
                         f"it knows {', '.join(objective_names())}")
    return get_objective(name).output


def _eval_rows(metrics: dict[str, Any], data_name: str) -> list[dict[str, Any]]:
    rows = []
    for name, value in sorted((metrics.get("eval") or {}).items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"metric": name, "value": float(value), "data": data_name})
    return rows


def render_card(directory: Path, repo_id: str, license: str | None = None) -> str:
    """The model card (YAML metadata + Markdown) for an output folder, from its kind's template."""
    import jinja2
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    output = model_output(directory)
    recipe = yaml.safe_load((directory / "recipe.yaml").read_text())
    metrics = json.loads((directory / "metrics.json").read_text())
    data = recipe.get("data", {})
    if data.get("source") == "world":
        data_name = "mmssl built-in world"
        data_description = (f"the mmssl built-in procedural world ({data['world']['num_scenes']} scenes of coloured "
                            "shapes with paraphrased captions; synthetic, no downloads)")
    else:
        data_name = str(data.get("path"))
        data_description = f"`{data.get('path')}` ({data.get('source')})"
    objective = dict(recipe.get("objective", {}))
    objective_name = objective.pop("name", "unknown")
    base_model = (recipe.get("model") or {}).get("pretrained")
    eval_rows = [row for row in _eval_rows(metrics, data_name)
                 if output.results is None or row["metric"] in output.results]
    card_data = ModelCardData(
        library_name=metrics.get("library_name") or output.library,
        pipeline_tag=output.pipeline_tag,
        license=license,
        tags=["mmssl", objective_name, "self-supervised"],
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        datasets=[data_name] if data.get("source") == "hub" else None,
        model_name=repo_id,
        eval_results=[EvalResult(task_type=output.eval_task, dataset_type=data_name.replace(" ", "-"),
                                 dataset_name=data_name, metric_type=row["metric"], metric_value=row["value"])
                      for row in eval_rows] or None,
    )
    mask_token = "[MASK]"
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        mask_token = json.loads(tokenizer_config.read_text()).get("mask_token", mask_token) or mask_token
    train = recipe.get("train", {})
    debias_report = directory / "mmssl_debias.json"  # written by `mmssl debias`: the projection and its effect
    debias = json.loads(debias_report.read_text()) if debias_report.is_file() else None
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(card_templates())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = output.card_template
    try:
        text = env.get_template(template).render(
            recipe=recipe, metrics=metrics, optimizer=train.get("optimizer", "adamw"),
            card_data=card_data.to_yaml(), repo_id=repo_id, objective=objective_name, base_model=base_model,
            architecture=metrics.get("architecture", "transformer"), mask_token=mask_token,
            objective_params=", ".join(f"{k}={v}" for k, v in _compact(objective).items()), eval_rows=eval_rows,
            data_description=data_description, steps=metrics.get("steps"), processes=metrics.get("processes", 1),
            train_seconds=metrics.get("train_seconds"), hardware=metrics.get("hardware", "unknown hardware"),
            learning_rate=train.get("learning_rate"), batch_size=train.get("batch_size"),
            accumulation=train.get("gradient_accumulation_steps", 1), scheduler=train.get("scheduler"),
            weight_decay=train.get("weight_decay"), recipe_yaml=yaml.safe_dump(recipe, sort_keys=False),
            limitations=_limitations(data.get("source")), remote_code=_remote_code(recipe),
            debias=debias,
        )
    except jinja2.TemplateError as exc:
        raise MmsslError(f"model card template {template!r} failed to render: {exc}") from None
    ModelCard(text)  # parses the metadata: a broken card fails here, before anything is uploaded
    return text


def _compact(value: Any) -> Any:
    """`value` without unset (null) keys and the sections left empty by removing them."""
    if isinstance(value, dict):
        kept = {k: _compact(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in kept.items() if v != {}}
    return value


def _remote_code(recipe: dict[str, Any]) -> list[dict[str, str]]:
    """The recipe keys that allowed custom code from a model or tokenizer folder to run (named in the card)."""
    found = []
    for section, path_key in (("model", "pretrained"), ("tokenizer", "path")):
        part = recipe.get(section) or {}
        if part.get("trust_remote_code"):
            found.append({"key": f"{section}.trust_remote_code", "path": str(part.get(path_key))})
    return found


def _limitations(source: str | None) -> str:
    if source == "world":
        return ("This model was trained on mmssl's synthetic world of coloured shapes. It knows that tiny vocabulary "
                "and nothing else; it is a demonstration and test artefact, not a general-purpose model.")
    return ("The model reflects the data it was trained on, including its biases and gaps; evaluate it on your own "
            "data before use. Self-supervised objectives do not filter harmful or private content in the corpus.")


def render_dataset_card(stats: dict[str, Any], repo_id: str, license: str | None = None,
                        info: DatasetInfo | None = None) -> str:
    """The dataset card of a mined dataset, from its `<output>.stats.json`; with `info` (a `datasets.DatasetInfo`)
    the metadata also holds `dataset_info` and the `configs` that point `load_dataset` at `data/train-*`."""
    import jinja2
    from huggingface_hub import DatasetCard, DatasetCardData

    config = yaml.safe_load(stats.get("config", "")) or {}
    card_data = DatasetCardData(license=license, tags=["mmssl", "hard-negatives", stats.get("method", "")],
                                task_categories=["sentence-similarity"], pretty_name=repo_id.split("/")[1])
    if info is not None:
        from datasets.info import DatasetInfosDict
        from datasets.utils.metadata import MetadataConfigs

        DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
        MetadataConfigs({"default": {"data_files": [{"split": "train", "path": "data/train-*"}]}}
                        ).to_dataset_card_data(card_data)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(card_templates())), undefined=jinja2.StrictUndefined)
    try:
        text = env.get_template("mined_dataset.md").render(
            card_data=card_data.to_yaml(), repo_id=repo_id, num_negatives=stats["num_negatives"],
            method=stats["method"], skip_top=config.get("skip_top", 0), window=config.get("window"),
            sampling=config.get("sampling", "top"), queries=stats["queries"], rows_written=stats["rows_written"],
            corpus_size=stats["corpus_size"], counts=sorted(stats.get("counts", {}).items()),
            guards=", ".join(f"{k}={v}" for k, v in (config.get("guards") or {}).items()),
        )
    except (jinja2.TemplateError, KeyError) as exc:
        raise MmsslError(f"dataset card failed to render: {exc}") from None
    DatasetCard(text)
    return text
