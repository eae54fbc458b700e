"""HTTP answers turned into our errors: temporary ones retried, permanent ones explained."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from modelcache.contract.errors import (
    AccessDeniedError,
    ModelCacheError,
    PermanentError,
    SourceNotFoundError,
    TemporaryError,
)

_REQUEST_ID_HEADERS = ("x-request-id", "x-amz-request-id", "x-amz-cf-id", "x-amzn-trace-id")
_TEMPORARY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


def request_id(headers: Mapping[str, str]) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_for_status(
    status: int, headers: Mapping[str, str], *, what: str, auth_hint: str
) -> ModelCacheError:
    """The error for a non-success answer about `what` (a file or listing, named for humans)."""
    rid = request_id(headers)
    suffix = f" (request id {rid})" if rid else ""
    if status in (401, 403):
        return AccessDeniedError(f"{what}: access denied (HTTP {status}){suffix}: {auth_hint}")
    if status == 404:
        return SourceNotFoundError(
            f"{what}: not found (HTTP 404){suffix}: check the URI and revision"
        )
    if status in _TEMPORARY_STATUSES:
        return TemporaryError(
            f"{what}: server answered HTTP {status}{suffix}",
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if status == 416:
        return PermanentError(
            f"{what}: the server refused the byte range (HTTP 416){suffix}: the file changed "
            "size since it was listed; run the pull again"
        )
    return PermanentError(f"{what}: unexpected HTTP {status}{suffix}")
