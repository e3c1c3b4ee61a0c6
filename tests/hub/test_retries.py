"""`mmssl.hub.retries`: which failures are retried, how often, and that the final message never holds the token."""

from __future__ import annotations

import pytest

from mmssl.errors import MmsslError
from mmssl.hub import default_backoff, with_retries


def failing(times: int, exc: Exception):
    calls = []

    def action() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return "done"

    return action, calls


def test_transient_failures_are_retried_until_one_succeeds():
    action, calls = failing(2, ConnectionError("connection reset"))
    assert with_retries(action, "uploading", retries=3, backoff=0.0) == ("done", 3)
    assert len(calls) == 3


def test_a_final_failure_names_the_endpoint_and_never_the_token():
    action, calls = failing(5, TimeoutError("timed out; headers: Authorization: Bearer hf_secret123"))
    with pytest.raises(MmsslError) as raised:
        with_retries(action, "uploading", retries=2, backoff=0.0, endpoint="http://hub.test", secret="hf_secret123")
    message = str(raised.value)
    assert len(calls) == 2 and "failed after 2 attempt(s)" in message and "http://hub.test" in message
    assert "hf_secret123" not in message and "Nothing was published" in message


def test_other_errors_are_not_retried():
    action, calls = failing(5, ValueError("bad request"))
    with pytest.raises(MmsslError, match="failed after 1 attempt\\(s\\): ValueError: bad request"):
        with_retries(action, "uploading", retries=3, backoff=0.0)
    assert len(calls) == 1


def test_backoff_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MMSSL_PUSH_BACKOFF", raising=False)
    assert default_backoff() == 1.0
    monkeypatch.setenv("MMSSL_PUSH_BACKOFF", "0.25")
    assert default_backoff() == 0.25
    monkeypatch.setenv("MMSSL_PUSH_BACKOFF", "soon")
    with pytest.raises(MmsslError, match="MMSSL_PUSH_BACKOFF='soon' is not a number"):
        default_backoff()
