"""hubspot-api-client as this package uses it, under both client.py and oauth.py.

It owns the errors every HubSpot call may raise (HubSpotError, HubSpotUnavailable), how the SDK's
exceptions are read into them (status, message and category, never headers or request data),
the request timeout, and the building of SDK API objects with the SDK's own retries off (the
callers decide what is retried). No database access and no HubSpot call of its own.
"""

from __future__ import annotations

import json
from typing import Any

import urllib3

REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)

# Errors raised below the SDK's own exception classes: TLS, DNS and connection failures.
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


class HubSpotError(Exception):
    """HubSpot refused a call in a way retrying will not fix (a 4xx other than 429)."""

    def __init__(self, message: str, *, status: int | None = None, category: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.category = category


class HubSpotUnavailable(HubSpotError):
    """HubSpot kept failing (5xx, connection errors or 429s) after every retry."""


def sdk_client(base_url: str) -> Any:
    """The SDK's root client on `base_url`; each of its API objects has its own HTTP pool."""
    import hubspot

    # No SDK-level retries: the caller decides what is retried, and counts every attempt.
    return hubspot.Client.create(host=base_url, retry=urllib3.Retry(total=0, redirect=0))


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an SDK exception carries, if any."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def is_api_exception(exc: BaseException) -> bool:
    """Whether `exc` is one of the SDK's ApiException classes."""
    # Every SDK sub-package has its own ApiException class; they share this shape.
    return (
        type(exc).__name__.endswith("Exception") and hasattr(exc, "status") and hasattr(exc, "body")
    )


def error_text(exc: BaseException) -> tuple[str, str]:
    """HubSpot's error message and category, without headers or request data."""
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
    except (TypeError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return str(data.get("message") or getattr(exc, "reason", "") or ""), str(
        data.get("category") or data.get("status") or ""
    )
