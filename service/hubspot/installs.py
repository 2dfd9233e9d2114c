"""The OAuth install's `state`: the only module that writes the `oauth_states` table.

/oauth/install issues a random state and remembers it in Postgres with the hash of a random
value the installing browser keeps in a cookie; /oauth/callback consumes it: one `DELETE ..
RETURNING`, so a state works once, whatever happens next, and only in the browser that started
the install (the cookie's hash compared in constant time). Only hashes are stored. Expired
states are deleted when a new one is issued (an index on expires_at keeps that cheap). Where
HubSpot sends the browser back comes from configuration alone, never from a request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from secrets import token_urlsafe
from urllib.parse import urlsplit

import sqlalchemy as sa

from service.settings import Settings

STATE_TTL_SECONDS = 600
CALLBACK_PATH = "/oauth/callback"
_BROWSER_KEY = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32)


class InvalidState(Exception):
    """An OAuth `state` that is unknown, already used, expired, or from another browser."""


def redirect_uri(settings: Settings) -> str | None:
    """Where HubSpot sends the installing user back: OAUTH_REDIRECT_URL, else beside
    WEBHOOK_PUBLIC_URL (`dev` sets the address it listens on); None when neither is set."""
    if settings.oauth_redirect_url is not None:
        return settings.oauth_redirect_url
    if settings.webhook_public_url is not None:
        parts = urlsplit(settings.webhook_public_url)
        return f"{parts.scheme}://{parts.netloc}{CALLBACK_PATH}"
    return None


def browser_key(cookie: str | None) -> str:
    """The browser's install key: the one its cookie holds (two tabs may install at once),
    else a new random one."""
    if cookie is not None and _BROWSER_KEY.match(cookie):
        return cookie
    return token_urlsafe(32)


def issue_state(connection: sa.Connection, browser: str) -> str:
    """A new single-use state bound to `browser`; expired states are deleted on the way."""
    connection.execute(sa.text("DELETE FROM oauth_states WHERE expires_at < now()"))
    state = token_urlsafe(32)
    connection.execute(
        sa.text(
            "INSERT INTO oauth_states (state_hash, browser_hash, expires_at)"
            " VALUES (:s, :b, now() + make_interval(secs => :ttl))"
        ),
        {"s": _digest(state), "b": _digest(browser), "ttl": STATE_TTL_SECONDS},
    )
    return state


def consume_state(connection: sa.Connection, state: str, browser: str | None) -> None:
    """Use up `state`; raise InvalidState unless it was issued to `browser` and is fresh.

    The row is deleted whatever the outcome, so a state presented by the wrong browser is
    spent too: call it on an autocommit connection (or commit when it raises).
    """
    row = connection.execute(
        sa.text(
            "DELETE FROM oauth_states WHERE state_hash = :s"
            " RETURNING browser_hash, expires_at > now() AS fresh"
        ),
        {"s": _digest(state)},
    ).first()
    if row is None:
        raise InvalidState("unknown or already used state; start the install again")
    if not row.fresh:
        raise InvalidState("the state expired; start the install again")
    presented = _digest(browser or "")
    if browser is None or not hmac.compare_digest(presented, str(row.browser_hash)):
        raise InvalidState("this browser did not start this install; start it again here")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
