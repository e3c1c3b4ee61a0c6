"""Test-wide settings: offline, quiet, deterministic; helpers to build small recipes."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"  # the local test Hub speaks Git-LFS, not Xet
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads yield the 2 cores instead of spinning
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
from helpers import ROOT  # noqa: E402

@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the real CLI in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture
def hub(monkeypatch):
    """The local test Hub (`hub_server.HubServer` on 127.0.0.1); the suite runs with HF_HUB_OFFLINE=1, so
    in-process clients are let through to it only."""
    import huggingface_hub.constants
    from hub_server import HubServer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer() as server:
        yield server
