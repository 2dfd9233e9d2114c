"""hubspot-api-client as this package uses it, under both client.py and oauth.py.

It owns the errors every HubSpot call may raise (HubSpotError, HubSpotUnavailable), how the SDK's
exceptions are read into them (status, message and category, never headers or request data),
the request timeout, the building of SDK API objects with the SDK's own retries off (the
callers decide what is retried), and `send`, the SDK's generic request that every CRM, pipeline
and OAuth token call goes through on both path families (paths.py). No database access.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import requests
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


class ApiRequestException(Exception):
    """HubSpot answered a generic request with an error status (read like the SDK's own)."""

    def __init__(self, status: int, reason: str, body: str, headers: Mapping[str, str]) -> None:
        super().__init__(f"HubSpot answered {status}")
        self.status, self.reason, self.body, self.headers = status, reason, body, headers


def send(
    base_url: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body: Mapping[str, Any] | None = None,
    form: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
) -> tuple[Any, int, Mapping[str, str]]:
    """One request on `path` as the SDK's `Client.api_request` builds it; (JSON, status,
    headers), or ApiRequestException on a non-2xx answer (status, body and headers kept).

    `api_request` is `Request(config, options).send()`, and its send() has no timeout, no
    connection pool and prints errors to stdout; so the SDK builds the request (URL, headers,
    body) and it goes out on `session` with REQUEST_TIMEOUT. Transport failures raise
    requests' errors, which are OSErrors (TRANSPORT_ERRORS).
    """
    from hubspot.utils.requests.http_request_builder import Request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    options: dict[str, Any] = {"method": method, "path": path, "base_url": base_url}
    if form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        options |= {"default_json": False, "body": urlencode(form)}
    elif json_body is not None:
        options["body"] = dict(json_body)
    built = Request({}, options | {"headers": headers})
    response = (session or requests).request(
        built.get_method(),
        built.get_url(),
        timeout=REQUEST_TIMEOUT,
        allow_redirects=False,
        **built.get_options_for_sending(),
    )
    if not 200 <= response.status_code < 300:
        raise ApiRequestException(
            response.status_code, response.reason or "", response.text, response.headers
        )
    return (response.json() if response.content else {}), response.status_code, response.headers


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
