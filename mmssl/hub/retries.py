"""Retries of Hub requests: transient failures (5xx, 429, dropped connections, timeouts) are retried with
exponential backoff; a final failure is one message that never contains the token."""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable

from mmssl.errors import MmsslError


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


def describe_error(exc: Exception, secret: str | None) -> str:
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
                raise MmsslError(f"{what}{where} failed after {attempt} attempt(s): {describe_error(exc, secret)}. "
                                 f"Nothing was published{hint}") from None
            time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
