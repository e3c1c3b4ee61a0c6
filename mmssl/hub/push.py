"""Pushing to the Hub: an mmssl output folder (`push_model`) or a mined dataset (`push_dataset`) with its card,
in one commit.

The endpoint, token and `HfApi` are injectable; every request of a push goes through that one `HfApi` (so to the
chosen endpoint) and the retry wrapper. The token comes from the usual places (argument, HF_TOKEN,
`hf auth login`) and is never printed or written anywhere; nothing is written into the user's files (cards and
parquet shards are uploaded from memory or a temporary folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from mmssl.errors import MmsslError
from mmssl.hub.cards import model_output, render_card, render_dataset_card
from mmssl.hub.retries import default_backoff, describe_error, with_retries

if TYPE_CHECKING:
    import datasets
    from huggingface_hub import HfApi

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
REPO_ID_RULE = ("a repo id is 'namespace/name', each part 1-96 ASCII letters, digits, '-', '_' or '.', starting with a "
                "letter or digit, not ending with '-' or '.', without '--' or '..', not ending in '.git'; "
                "e.g. --repo-id my-org/mlm-world. Nothing was sent")
UPLOAD_IGNORE = ["checkpoints/*", "tracking/*", ".*", "*/.*", "*.bin", "*.pkl", "*.pt", "*.pth", "*.tmp"]


@dataclass
class PushResult:
    """What a push published: the repo, its commit, the files in that commit and the attempts it took."""

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


def _connect(endpoint: str | None, token: str | None, api: HfApi | None = None) -> tuple[HfApi, str]:
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


def _publish(api: HfApi, token: str, repo_id: str, repo_type: str, operations: Callable[[list[str]], list], *,
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
    api: HfApi | None = None,
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


def push_dataset(
    path: str | Path,
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    api: HfApi | None = None,
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
                             f"{describe_error(exc, None)}") from None
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


def _write_shards(rows: datasets.Dataset, folder: Path, max_shard_bytes: int) -> list[str]:
    """`rows` as `data/train-0000i-of-0000N.parquet` under `folder`, N from the in-memory size (as datasets does)."""
    count = rows.data.nbytes // max_shard_bytes + 1
    (folder / "data").mkdir()
    shards = [f"data/train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    for i, shard in enumerate(shards):
        rows.shard(num_shards=count, index=i, contiguous=True).to_parquet(str(folder / shard))
    return shards
