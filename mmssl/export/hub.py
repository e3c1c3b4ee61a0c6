"""Publishing to the Hugging Face Hub: model cards from templates, one commit per push, retries with backoff.

Everything that talks to the Hub is here. The endpoint, token and `HfApi` are injectable; every request of a push
goes through that one `HfApi` (so to the chosen endpoint) and the retry wrapper. The token comes from the usual places
(argument, HF_TOKEN, `hf auth login`) and is never printed or written anywhere; nothing is written into the user's
files (cards and parquet shards are uploaded from memory or a temporary folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from mmssl.errors import MmsslError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
REPO_ID_RULE = ("a repo id is 'namespace/name', each part 1-96 ASCII letters, digits, '-', '_' or '.', starting with a "
                "letter or digit, not ending with '-' or '.', without '--' or '..', not ending in '.git'; "
                "e.g. --repo-id my-org/mlm-world. Nothing was sent")
UPLOAD_IGNORE = ["checkpoints/*", "tracking/*", ".*", "*/.*", "*.bin", "*.pkl", "*.pt", "*.pth", "*.tmp"]



@dataclass
class PushResult:
    repo_id: str
    commit_url: str
    files: list[str]
    attempts: int


def check_repo_id(repo_id: str) -> None:
    """`namespace/name` by huggingface_hub's own rules (`validate_repo_id`), checked before any request."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        reason = str(exc).replace(f": '{repo_id}'", "").split(". Use `repo_type`")[0].rstrip(".")
        raise MmsslError(f"repo id {repo_id!r} is not valid ({reason}); {REPO_ID_RULE}") from None
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise MmsslError(f"repo id {repo_id!r} is not 'namespace/name'; {REPO_ID_RULE}")


def card_templates() -> Path:
    """The folder of card templates (top-level ``model_cards/``, installed as ``mmssl.model_cards``)."""
    from importlib.resources import files

    return Path(str(files("mmssl.model_cards")))


def model_output(directory: Path):
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
        eval_results=[EvalResult(task_type=output.eval_task, dataset_type=data_name.replace(" ", "-"), dataset_name=data_name,
                                 metric_type=row["metric"], metric_value=row["value"]) for row in eval_rows] or None,
    )
    mask_token = "[MASK]"
    tokenizer_config = directory / "tokenizer_config.json"
    if tokenizer_config.is_file():
        mask_token = json.loads(tokenizer_config.read_text()).get("mask_token", mask_token) or mask_token
    train = recipe.get("train", {})
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


def default_backoff() -> float:
    """Seconds before the first retry (doubling after): MMSSL_PUSH_BACKOFF, else 1."""
    value = os.environ.get("MMSSL_PUSH_BACKOFF", "1")
    try:
        backoff = float(value)
    except ValueError:
        backoff = -1.0
    if not backoff >= 0:
        raise MmsslError(f"MMSSL_PUSH_BACKOFF={value!r} is not a number of seconds >= 0; e.g. MMSSL_PUSH_BACKOFF=1")
    return backoff


def _connect(endpoint: str | None, token: str | None, api=None) -> tuple[Any, str]:
    """The one `HfApi` (and token) every request of a push goes through; refuses offline mode, a bad endpoint and a
    missing token before any request."""
    from huggingface_hub import HfApi, constants, get_token

    if constants.is_offline_mode():
        name = next((n for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(n)), "HF_HUB_OFFLINE")
        raise MmsslError(f"{name}={os.environ.get(name, '1')} is set; publishing needs the network: unset it (or set "
                         f"{name}=0) and run the same command again. Nothing was sent")
    if endpoint is not None and not re.match(r"^https?://[^/\s]+", endpoint):
        raise MmsslError(f"endpoint {endpoint!r} is not an http(s) URL; e.g. --endpoint https://huggingface.co. "
                         "Nothing was sent")
    token = token or (api.token if api is not None else None) or get_token()
    if not token:
        raise MmsslError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (the token is never printed)")
    return api or HfApi(endpoint=endpoint, token=token), token


def _transient(exc: Exception) -> bool:
    """Worth retrying: 5xx, 429, refused/dropped connections and timeouts (not offline mode, not 4xx)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        return status is None or status >= 500 or status == 429
    transport = {cls.__name__ for cls in type(exc).__mro__} & {"TransportError", "TimeoutException"}
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(transport)


def _describe(exc: Exception, secret: str | None) -> str:
    """One line about a failed request, without the token (exception texts can carry request details)."""
    text = " ".join(str(exc).split())
    if secret:
        text = text.replace(secret, "<token>")
    text = re.sub(r"(?i)bearer\s+\S+", "Bearer <token>", text)  # scrubbed before shortening: no partial token
    return f"{type(exc).__name__}: {text[:400] or 'no details'}"


def with_retries(action: Callable[[], Any], what: str, retries: int, backoff: float, *, endpoint: str | None = None,
                 secret: str | None = None) -> tuple[Any, int]:
    """Run `action`, retrying transient failures (5xx, 429, dropped connections) with exponential backoff; a final
    failure is one MmsslError naming `endpoint`, never containing `secret`."""
    where = f" on {endpoint}" if endpoint else ""
    for attempt in range(1, retries + 1):
        try:
            return action(), attempt
        except Exception as exc:  # noqa: BLE001 - classified below
            transient = _transient(exc)
            if not transient or attempt == retries:
                hint = (f"; check that {endpoint or 'the endpoint'} is the Hub you mean (--endpoint, HF_ENDPOINT) and "
                        "is reachable, then run the same command again") if transient else ""
                raise MmsslError(f"{what}{where} failed after {attempt} attempt(s): {_describe(exc, secret)}. "
                                 f"Nothing was published{hint}") from None
            time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _global_endpoint(endpoint: str) -> Iterator[None]:
    """huggingface_hub's global endpoint set to `endpoint` for the duration of a push: the client makes requests of
    its own to `constants.ENDPOINT` (e.g. the agent-harness registry for its user agent), which would otherwise go to
    huggingface.co (or HF_ENDPOINT), not where the user pointed the push."""
    from huggingface_hub import constants

    saved, constants.ENDPOINT = constants.ENDPOINT, endpoint.rstrip("/")
    try:
        yield
    finally:
        constants.ENDPOINT = saved


def _publish(api, token: str, repo_id: str, repo_type: str, operations: Callable[[list[str]], list], *,
             message: str, private: bool, overwrite: bool, revision: str | None, retries: int,
             backoff: float) -> tuple[Any, int]:
    """The network part of a push, each request retried: check the repo, create it (and the branch), then ONE commit
    of `operations(files already in the repo)` (rebuilt per attempt: the client consumes them)."""
    label = "dataset repo" if repo_type == "dataset" else "repo"

    def call(action: Callable[[], Any], what: str) -> Any:
        return with_retries(action, what, retries, backoff, endpoint=api.endpoint, secret=token)

    with _global_endpoint(api.endpoint):
        existing: list[str] = []
        exists, _ = call(lambda: api.repo_exists(repo_id, repo_type=repo_type),
                         f"checking whether {label} {repo_id!r} exists")
        if exists:
            existing = call(lambda: api.list_repo_files(repo_id, repo_type=repo_type),
                            f"listing the files of {label} {repo_id!r}")[0]
            if not overwrite and [f for f in existing if f != ".gitattributes"]:  # the Hub adds .gitattributes itself
                raise MmsslError(f"{label} {repo_id!r} already exists and has files; pass --overwrite to publish "
                                 "over it")
        call(lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True),
             f"creating the {label} {repo_id!r}")
        if revision:
            call(lambda: api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True),
                 f"creating branch {revision!r} of {repo_id!r}")
        return call(lambda: api.create_commit(repo_id, operations(existing), commit_message=message,
                                              repo_type=repo_type, revision=revision),
                    f"uploading to {label} {repo_id!r}")


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
    backoff: float | None = None,
) -> PushResult:
    """Publish an mmssl output folder (model, recipe, metrics; safetensors only) and its card in one commit.

    The card is uploaded from memory: nothing is written into `directory` (a README.md there is left alone and not
    uploaded; the card takes its place in the repo). In a run folder only the files the run recorded writing are
    uploaded: whatever else the user keeps there stays private."""
    from huggingface_hub import CommitOperationAdd

    from mmssl.outputs import RunManifest

    directory = Path(directory)
    check_repo_id(repo_id)
    backoff = default_backoff() if backoff is None else backoff
    card = render_card(directory, repo_id, license)  # all checks before anything touches the network
    api, token = _connect(endpoint, token, api)
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and not _ignored(p.relative_to(directory)))
    manifest = RunManifest.read(directory)
    files = [f for f in files if f != "README.md" and (manifest is None or manifest.owns(f))]

    def operations(existing: list[str]) -> list:
        return [*(CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(directory / f)) for f in files),
                CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8"))]

    info, attempts = _publish(
        api, token, repo_id, "model", operations, private=private, overwrite=overwrite, revision=revision,
        message=commit_message or f"Upload {model_output(directory).kind} model trained with mmssl", retries=retries,
        backoff=backoff)
    return PushResult(repo_id, str(getattr(info, "commit_url", info)), sorted([*files, "README.md"]), attempts)


def _ignored(relative: Path) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(str(relative), pattern) for pattern in UPLOAD_IGNORE)


def render_dataset_card(stats: dict[str, Any], repo_id: str, license: str | None = None, info=None) -> str:
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
    backoff: float | None = None,
    max_shard_bytes: int = 500 * 10**6,
) -> PushResult:
    """Publish a mined dataset (`.jsonl`/`.parquet` written by `mmssl mine`) as parquet shards
    (`data/train-*.parquet`) plus its card, in one commit through the same `HfApi` (so to the same endpoint)."""
    import tempfile

    import datasets
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    path = Path(path)
    check_repo_id(repo_id)
    backoff = default_backoff() if backoff is None else backoff
    stats_path = path.with_name(path.name + ".stats.json")
    if not path.is_file() or path.suffix not in (".jsonl", ".parquet") or not stats_path.is_file():
        raise MmsslError(f"{str(path)!r} is not a dataset written by `mmssl mine` (a .jsonl/.parquet file with "
                         f"{stats_path.name} beside it)")
    stats = json.loads(stats_path.read_text())
    api, token = _connect(endpoint, token, api)
    with tempfile.TemporaryDirectory(prefix="mmssl-push-") as tmp:
        folder = Path(tmp)
        read = datasets.Dataset.from_json if path.suffix == ".jsonl" else datasets.Dataset.from_parquet
        try:
            rows = read(str(path), cache_dir=str(folder / "cache"))
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
            raise MmsslError(f"{str(path)!r} could not be read as {path.suffix[1:]} rows: "
                             f"{_describe(exc, None)}") from None
        shards = _write_shards(rows, folder, max_shard_bytes)
        info = datasets.DatasetInfo(features=rows.features, splits=datasets.SplitDict(), dataset_size=rows.data.nbytes,
                                    download_size=sum((folder / s).stat().st_size for s in shards))
        info.splits.add(datasets.SplitInfo("train", num_bytes=rows.data.nbytes, num_examples=len(rows)))
        card = render_dataset_card(stats, repo_id, license, info)

        def operations(existing: list[str]) -> list:
            stale = [f for f in existing if f.startswith("data/") and f not in shards]  # no old rows stay behind
            return [*(CommitOperationDelete(path_in_repo=f) for f in stale),
                    *(CommitOperationAdd(path_in_repo=s, path_or_fileobj=str(folder / s)) for s in shards),
                    CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8"))]

        commit, attempts = _publish(
            api, token, repo_id, "dataset", operations, message=f"Upload {len(rows)} mined rows (mmssl)",
            private=private, overwrite=overwrite, revision=None, retries=retries, backoff=backoff)
    return PushResult(repo_id, str(getattr(commit, "commit_url", commit)), sorted([*shards, "README.md"]), attempts)


def _write_shards(rows, folder: Path, max_shard_bytes: int) -> list[str]:
    """`rows` as `data/train-0000i-of-0000N.parquet` under `folder`, N from the in-memory size (as datasets does)."""
    count = rows.data.nbytes // max_shard_bytes + 1
    (folder / "data").mkdir()
    shards = [f"data/train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    for i, shard in enumerate(shards):
        rows.shard(num_shards=count, index=i, contiguous=True).to_parquet(str(folder / shard))
    return shards
