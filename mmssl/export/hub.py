"""Publishing to the Hugging Face Hub: model cards from templates, one commit per push, retries with backoff.

Everything that talks to the Hub is here. The endpoint, token and `HfApi` are injectable; the token comes
from the usual places (argument, HF_TOKEN, `hf auth login`) and is never printed or written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from mmssl.errors import MmsslError

CARDS = Path(__file__).resolve().parents[1] / "model_cards"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
UPLOAD_IGNORE = ["checkpoints/*", "tracking/*", ".*", "*/.*", "*.bin", "*.pkl", "*.pt", "*.pth", "*.tmp"]

# kind -> (library_name, pipeline_tag, template)
KINDS: dict[str, tuple[str, str, str]] = {
    "mlm": ("transformers", "fill-mask", "mlm.md"),
    "clm": ("transformers", "text-generation", "clm.md"),
    "sentence_embedding": ("sentence-transformers", "sentence-similarity", "sentence_embedding.md"),
    "clip": ("open_clip", "zero-shot-image-classification", "clip.md"),
}
EVAL_TASKS = {"mlm": "fill-mask", "clm": "text-generation", "sentence_embedding": "sentence-similarity",
              "clip": "zero-shot-image-classification"}


@dataclass
class PushResult:
    repo_id: str
    commit_url: str
    files: list[str]
    attempts: int


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id or ""):
        raise MmsslError(f"repo id {repo_id!r} is not 'namespace/name' (letters, digits, '-', '_', '.'); "
                         "e.g. --repo-id my-org/mlm-world")


def detect_kind(directory: Path) -> str:
    """What an mmssl output folder holds, from the files its ecosystem writes."""
    if not (directory / "recipe.yaml").is_file() or not (directory / "metrics.json").is_file():
        raise MmsslError(f"{str(directory)!r} is not a finished mmssl output folder (needs recipe.yaml and "
                         "metrics.json); pass the output_dir of a completed `mmssl train` run")
    if (directory / "open_clip_config.json").is_file():
        return "clip"
    if (directory / "modules.json").is_file():
        return "sentence_embedding"
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    architectures = " ".join(config.get("architectures") or [])
    if "MaskedLM" in architectures:
        return "mlm"
    if "CausalLM" in architectures or "LMHead" in architectures:
        return "clm"
    raise MmsslError(f"{str(directory)!r}: cannot tell which kind of model it holds (no open_clip_config.json, "
                     "modules.json, or a masked/causal LM config.json)")


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

    kind = detect_kind(directory)
    library, pipeline_tag, template = KINDS[kind]
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
    task = EVAL_TASKS[kind]
    eval_rows = _eval_rows(metrics, data_name)
    card_data = ModelCardData(
        library_name=library,
        pipeline_tag=pipeline_tag,
        license=license,
        tags=["mmssl", objective_name, "self-supervised"],
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        datasets=[data_name] if data.get("source") == "hub" else None,
        model_name=repo_id,
        eval_results=[EvalResult(task_type=task, dataset_type=data_name.replace(" ", "-"), dataset_name=data_name,
                                 metric_type=row["metric"], metric_value=row["value"]) for row in eval_rows] or None,
    )
    mask_token = "[MASK]"
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        mask_token = json.loads(tokenizer_config.read_text()).get("mask_token", mask_token) or mask_token
    train = recipe.get("train", {})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(CARDS)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    try:
        text = env.get_template(template).render(
            card_data=card_data.to_yaml(), repo_id=repo_id, objective=objective_name, base_model=base_model,
            architecture=metrics.get("architecture", "transformer"), mask_token=mask_token,
            objective_params=", ".join(f"{k}={v}" for k, v in objective.items()), eval_rows=eval_rows,
            data_description=data_description, steps=metrics.get("steps"), processes=metrics.get("processes", 1),
            train_seconds=metrics.get("train_seconds"), hardware=metrics.get("hardware", "unknown hardware"),
            learning_rate=train.get("learning_rate"), batch_size=train.get("batch_size"),
            accumulation=train.get("gradient_accumulation_steps", 1), scheduler=train.get("scheduler"),
            weight_decay=train.get("weight_decay"), recipe_yaml=yaml.safe_dump(recipe, sort_keys=False),
            limitations=_limitations(data.get("source")),
        )
    except jinja2.TemplateError as exc:
        raise MmsslError(f"model card template {template!r} failed to render: {exc}") from None
    ModelCard(text)  # parses the metadata: a broken card fails here, before anything is uploaded
    return text


def _limitations(source: str | None) -> str:
    if source == "world":
        return ("This model was trained on mmssl's synthetic world of coloured shapes. It knows that tiny vocabulary "
                "and nothing else; it is a demonstration and test artefact, not a general-purpose model.")
    return ("The model reflects the data it was trained on, including its biases and gaps; evaluate it on your own "
            "data before use. Self-supervised objectives do not filter harmful or private content in the corpus.")


def _api(endpoint: str | None, token: str | None, api=None):
    from huggingface_hub import HfApi, get_token

    token = token or (api.token if api is not None else None) or get_token()
    if not token:
        raise MmsslError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (the token is never printed)")
    return api or HfApi(endpoint=endpoint, token=token), token


def _transient(exc: Exception) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        return status is None or status >= 500 or status == 429
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or "connect" in type(exc).__name__.lower()


def with_retries(action: Callable[[], Any], what: str, retries: int, backoff: float) -> tuple[Any, int]:
    """Run `action`, retrying transient failures (5xx, 429, dropped connections) with exponential backoff."""
    for attempt in range(1, retries + 1):
        try:
            return action(), attempt
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _transient(exc) or attempt == retries:
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise MmsslError(f"{what} failed after {attempt} attempt(s): {detail}. Nothing was published "
                                 "by the failed commit; run the same command again") from None
            time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def push_model(
    directory: str | Path,
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    api=None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    overwrite: bool = False,
    license: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
) -> PushResult:
    """Publish an mmssl output folder (model, card, recipe, metrics; safetensors only) in one commit."""
    directory = Path(directory)
    check_repo_id(repo_id)
    card = render_card(directory, repo_id, license)  # all checks before anything touches the network
    api, token = _api(endpoint, token, api)
    exists = api.repo_exists(repo_id, repo_type="model")
    if exists and not overwrite and api.list_repo_files(repo_id, repo_type="model"):
        raise MmsslError(f"repo {repo_id!r} already exists and has files; pass --overwrite to publish over it")
    with_retries(lambda: api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True),
                 "creating the repo", retries, backoff)
    if revision:
        with_retries(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True),
                     f"creating branch {revision!r}", retries, backoff)
    card_path = directory / "README.md"
    tmp = directory / ".README.md.tmp"
    tmp.write_text(card, encoding="utf-8")
    os.replace(tmp, card_path)
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                   if p.is_file() and not _ignored(p.relative_to(directory)))
    message = commit_message or f"Upload {detect_kind(directory)} model trained with mmssl"
    info, attempts = with_retries(
        lambda: api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model", revision=revision,
                                  commit_message=message, ignore_patterns=UPLOAD_IGNORE),
        f"uploading {str(directory)!r} to {repo_id!r}", retries, backoff)
    return PushResult(repo_id, str(getattr(info, "commit_url", info)), files, attempts)


def _ignored(relative: Path) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(str(relative), pattern) for pattern in UPLOAD_IGNORE)


def render_dataset_card(stats: dict[str, Any], repo_id: str, license: str | None = None) -> str:
    """The dataset card of a mined dataset, from its `<output>.stats.json`."""
    import jinja2
    from huggingface_hub import DatasetCard, DatasetCardData

    config = yaml.safe_load(stats.get("config", "")) or {}
    card_data = DatasetCardData(license=license, tags=["mmssl", "hard-negatives", stats.get("method", "")],
                                task_categories=["sentence-similarity"], pretty_name=repo_id.split("/")[1])
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(CARDS)), undefined=jinja2.StrictUndefined)
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


def push_dataset(
    path: str | Path,
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    api=None,
    private: bool = False,
    overwrite: bool = False,
    license: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
) -> PushResult:
    """Publish a mined dataset (`.jsonl`/`.parquet` written by `mmssl mine`) with `datasets`' push_to_hub."""
    import datasets

    path = Path(path)
    check_repo_id(repo_id)
    stats_path = path.with_name(path.name + ".stats.json")
    if not path.is_file() or path.suffix not in (".jsonl", ".parquet") or not stats_path.is_file():
        raise MmsslError(f"{str(path)!r} is not a dataset written by `mmssl mine` (a .jsonl/.parquet file with "
                         f"{stats_path.name} beside it)")
    card = render_dataset_card(json.loads(stats_path.read_text()), repo_id, license)
    rows = datasets.Dataset.from_json(str(path)) if path.suffix == ".jsonl" else datasets.Dataset.from_parquet(str(path))
    api, token = _api(endpoint, token, api)
    if api.repo_exists(repo_id, repo_type="dataset") and not overwrite and api.list_repo_files(repo_id, repo_type="dataset"):
        raise MmsslError(f"dataset repo {repo_id!r} already exists and has files; pass --overwrite to publish over it")
    with_retries(lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True),
                 "creating the dataset repo", retries, backoff)
    # The card first: datasets' push_to_hub keeps an existing README's text and adds its dataset_info metadata.
    with_retries(lambda: api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id,
                                         repo_type="dataset", commit_message="Add dataset card (mmssl)"),
                 "uploading the dataset card", retries, backoff)
    info, attempts = with_retries(
        lambda: rows.push_to_hub(repo_id, token=token, private=private,
                                 commit_message=f"Upload {len(rows)} mined rows (mmssl)"),
        f"uploading {str(path)!r} to {repo_id!r}", retries, backoff)
    files = api.list_repo_files(repo_id, repo_type="dataset")
    return PushResult(repo_id, str(getattr(info, "commit_url", info)), sorted(files), attempts)
