"""Calls made as the app itself, not as one portal: the Webhooks Journal and its subscriptions.

They authenticate with a client-credentials token (HUBSPOT.md §5; developers.hubspot.com,
webhooks-journal/guide, "Authentication and scopes"): POST /oauth/v1/token with
grant_type=client_credentials, the app's client id and secret and the scopes wanted; HubSpot
answers `access_token` and `expires_in`, no refresh token. `AppToken` caches it and fetches a
new one before it expires (REFRESH_MARGIN), or at once after a 401. `AppApi.call` retries 429
(honouring Retry-After), 5xx and transport failures with backoff, like the CRM client; the
journal's calls are exempt from the daily and ten-secondly limits but may still answer 429.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from service.hubspot.sdk import (
    TRANSPORT_ERRORS,
    ApiRequestException,
    HubSpotError,
    HubSpotUnavailable,
    error_text,
    send,
)
from service.settings import Settings

log = logging.getLogger(__name__)

# The token endpoint the journal guide documents for client credentials.
TOKEN_PATH = "/oauth/v1/token"  # noqa: S105 - a path, not a secret
JOURNAL_SCOPES = (
    "developer.webhooks_journal.read",
    "developer.webhooks_journal.subscriptions.read",
    "developer.webhooks_journal.subscriptions.write",
)
# A token is replaced when less than this is left of its life.
REFRESH_MARGIN = 300.0
ATTEMPTS = 5
MAX_BACKOFF = 30.0


class AppAuthError(HubSpotError):
    """HubSpot refused the app's client credentials (wrong id or secret, or a scope)."""


def error_message(exc: ApiRequestException) -> str:
    """HubSpot's message for a refused call (sdk.error_text), at most 300 characters."""
    return (error_text(exc)[0] or f"HTTP {exc.status}")[:300]


@dataclass
class AppToken:
    """The app's client-credentials token, cached until REFRESH_MARGIN before it expires.

    Thread-safe: threads of one process share one token, and one fetch at a time.
    """

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: Sequence[str] = JOURNAL_SCOPES
    session: requests.Session = field(default_factory=requests.Session, repr=False)
    clock: Callable[[], float] = time.time
    _token: str | None = field(default=None, init=False, repr=False)
    _expires_at: float = field(default=0.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def get(self) -> str:
        """A token with more than REFRESH_MARGIN left (or half its life, if shorter)."""
        with self._lock:
            if self._token is None or self.clock() >= self._expires_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """HubSpot refused `token` (401): the next `get` fetches a new one."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "scope": " ".join(self.scopes),
        }
        try:
            data, _, _ = send(self.base_url, "POST", TOKEN_PATH, form=form, session=self.session)
        except ApiRequestException as exc:
            if exc.status == 429 or exc.status >= 500:
                raise HubSpotUnavailable(
                    f"client credentials: HubSpot answered {exc.status}", status=exc.status
                ) from None
            raise AppAuthError(
                f"HubSpot refused the app's client credentials ({exc.status}):"
                f" {error_message(exc)}",
                status=exc.status,
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise HubSpotUnavailable(f"client credentials: {type(exc).__name__}") from None
        token, lifetime = data.get("access_token"), data.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
            raise HubSpotUnavailable("client credentials: no access_token/expires_in in answer")
        margin = min(REFRESH_MARGIN, float(lifetime) / 2)
        self._token, self._expires_at = token, self.clock() + float(lifetime) - margin
        log.info("app_token_issued", extra={"expires_in": lifetime})


@dataclass
class AppApi:
    """HubSpot calls made with the app's token: retries 429, 5xx and transport failures."""

    base_url: str
    token: AppToken
    session: requests.Session = field(default_factory=requests.Session, repr=False)
    sleep: Callable[[float], None] = time.sleep
    attempts: int = ATTEMPTS

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        expect: Sequence[int] = (),
    ) -> tuple[Any, int]:
        """(JSON, status). HubSpotError on a 4xx other than 429 and the statuses in `expect`
        (those return with an empty body); HubSpotUnavailable when retries run out."""
        last = ""
        refreshed = False
        for attempt in range(self.attempts):
            token = self.token.get()
            try:
                data, status, _ = send(
                    self.base_url,
                    method,
                    path,
                    token=token,
                    json_body=json_body,
                    session=self.session,
                )
                return data, status
            except ApiRequestException as exc:
                if exc.status in expect:
                    return {}, exc.status
                if exc.status == 401 and not refreshed:
                    self.token.invalidate(token)
                    refreshed = True
                    continue
                if exc.status != 429 and exc.status < 500:
                    raise HubSpotError(
                        f"{method} {path.partition('?')[0]}: HubSpot answered {exc.status}:"
                        f" {error_message(exc)}",
                        status=exc.status,
                    ) from None
                last = f"HubSpot answered {exc.status}"
                wait = _retry_after(exc.headers) if exc.status == 429 else None
            except TRANSPORT_ERRORS as exc:
                last, wait = type(exc).__name__, None
            if attempt + 1 < self.attempts:
                self.sleep(wait if wait is not None else min(MAX_BACKOFF, 0.5 * 2**attempt))
        raise HubSpotUnavailable(f"{method} {path.partition('?')[0]}: {last}")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return min(MAX_BACKOFF, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


def from_settings(settings: Settings, scopes: Sequence[str] = JOURNAL_SCOPES) -> AppApi | None:
    """The app's API from HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET (None: either unset)."""
    if settings.client_id is None or not settings.client_secrets:
        return None
    session = requests.Session()
    token = AppToken(
        settings.api_base_url,
        settings.client_id,
        settings.client_secrets[0],
        scopes=tuple(dict.fromkeys((*scopes, *settings.scopes))),
        session=session,
    )
    return AppApi(settings.api_base_url, token, session=session)
