"""What a token may do: HubSpot's access-token info endpoints, one cheap call each.

A private app token (`pat-...`) is described by `POST /oauth/v2/private-apps/get/access-token-info`
with `{"tokenKey": token}` (HubSpot's private apps guide), which answers `{userId, hubId, appId,
scopes}`; an OAuth access token by `GET /oauth/v1/access-tokens/{token}` (the SDK's
access_tokens_api), which answers `hub_id` and `scopes` among others. Neither is a CRM call, so
neither goes through the rate limiter or the call counts of client.py. `doctor` uses this to
tell whether the token works and has the read scopes for the object types being received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from service.hubspot.sdk import (
    REQUEST_TIMEOUT,
    TRANSPORT_ERRORS,
    HubSpotError,
    HubSpotUnavailable,
    error_text,
    is_api_exception,
    sdk_client,
    status_of,
)

PRIVATE_APP_TOKEN_INFO = "/oauth/v2/private-apps/get/access-token-info"  # noqa: S105 - a path


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """The portal a token belongs to and the scopes HubSpot granted it."""

    portal_id: int
    scopes: frozenset[str]


def token_info(base_url: str, token: str) -> TokenInfo:
    """Ask HubSpot about `token`; HubSpotError when it refuses it (HubSpotUnavailable: 5xx,
    429 or no connection). The token never appears in an error message."""
    if token.startswith("pat-"):
        return _private_app(base_url, token)
    try:
        info = sdk_client(base_url).oauth.access_tokens_api.get(
            token, _request_timeout=REQUEST_TIMEOUT
        )
    except TRANSPORT_ERRORS as exc:
        raise HubSpotUnavailable(f"token info: {type(exc).__name__}") from None
    except Exception as exc:
        if not is_api_exception(exc):
            raise
        # The category only: a message could quote what was sent.
        raise _refused(status_of(exc) or 0, error_text(exc)[1]) from None
    return TokenInfo(int(info.hub_id), frozenset(info.scopes or ()))


def _private_app(base_url: str, token: str) -> TokenInfo:
    try:
        response = httpx.post(
            base_url + PRIVATE_APP_TOKEN_INFO,
            json={"tokenKey": token},
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(REQUEST_TIMEOUT[1], connect=REQUEST_TIMEOUT[0]),
        )
    except httpx.HTTPError as exc:
        raise HubSpotUnavailable(f"token info: {type(exc).__name__}") from None
    if response.status_code >= 400:
        raise _refused(response.status_code, _category(response))
    data: dict[str, Any] = response.json()
    return TokenInfo(int(data["hubId"]), frozenset(data.get("scopes") or ()))


def _category(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    return str(data.get("category") or data.get("status") or "") if isinstance(data, dict) else ""


def _refused(status: int, category: str) -> HubSpotError:
    kind = HubSpotUnavailable if status >= 500 or status in (0, 429) else HubSpotError
    text = f"token info: HubSpot answered {status} {category}".strip()
    return kind(text, status=status, category=category)
