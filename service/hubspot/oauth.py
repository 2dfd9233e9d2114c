"""OAuth for the public app: the only module that writes the `hubspot_tokens` table.

It owns the install's HubSpot side (the consent page URL, trading an authorization code for
tokens; the single-use state is installs.py) and the portals' tokens kept in Postgres, sealed
with TOKEN_ENCRYPTION_KEY (sealing.py): handing out a valid access token, refreshing it 5
minutes before it expires (one refresh per portal at a time across processes, under a
session-level advisory lock, so no transaction stays open across the call), marking a portal
`needs_reinstall` when its refresh token stops working, listing those portals, and re-sealing
every row with the first key (`rotate-token-key`). Rows stored in plaintext before encryption
are read as they are, with a warning once per portal, and sealed by their next refresh or by
`rotate-token-key`. client.py asks it for tokens; it calls HubSpot's OAuth endpoints through
sdk.py only, the token endpoint on HUBSPOT_API_VERSION's path (paths.py: `/oauth/2026-03/token`
or `/oauth/v1/token`, the same form and answer).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa

from service.db import utcnow
from service.hubspot.paths import ApiPaths
from service.hubspot.sdk import (
    REQUEST_TIMEOUT,
    TRANSPORT_ERRORS,
    HubSpotError,
    HubSpotUnavailable,
    error_text,
    is_api_exception,
    sdk_client,
    send,
    status_of,
)
from service.hubspot.sealing import NoKey, TokenCipher, WrongKey, is_sealed
from service.settings import DEFAULT_API_VERSION, Settings

log = logging.getLogger(__name__)

REFRESH_MARGIN = timedelta(minutes=5)
AUTHORIZE_URL = "https://app.hubspot.com/oauth/authorize"
_REFRESH_LOCK = 0x48_53_57_48_02  # advisory lock namespace for token refreshes


class NeedsReinstall(HubSpotError):
    """The portal's OAuth tokens are revoked or refreshing them fails: install the app again."""


class NoToken(HubSpotError):
    """No access token for this portal: no private app token and no OAuth install."""


class TokenKeyError(HubSpotError):
    """OAuth tokens cannot be sealed or opened: TOKEN_ENCRYPTION_KEY is unset or lacks their key."""


@dataclass(frozen=True, slots=True)
class Tokens:
    """An OAuth token set as HubSpot issued it."""

    access_token: str
    refresh_token: str
    expires_at: datetime


# --- the install flow ------------------------------------------------------------------------


def authorize_url(*, client_id: str, redirect_uri: str, scopes: Sequence[str], state: str) -> str:
    """HubSpot's OAuth consent page for this app."""
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
        }
    )
    return f"{AUTHORIZE_URL}?{query}"


# --- the token store -------------------------------------------------------------------------


@dataclass(slots=True)
class _OAuthSdk:
    """The SDK's OAuth API objects, built once (each property access builds a new pool). Token
    metadata stays on `/oauth/v1/access-tokens/{token}`: 2026-03 replaces it with an introspect
    endpoint of another shape."""

    access_tokens: Any


@dataclass
class TokenStore:
    """The portals' OAuth tokens in Postgres, issued and refreshed with this app's credentials."""

    engine: sa.Engine
    base_url: str
    client_id: str | None = None
    client_secret: str | None = None
    cipher: TokenCipher = field(default_factory=lambda: TokenCipher(()), repr=False)
    paths: ApiPaths = field(default_factory=lambda: ApiPaths(DEFAULT_API_VERSION))
    _sdk: _OAuthSdk | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, engine: sa.Engine) -> TokenStore:
        """The store with the app credentials the settings carry (HUBSPOT_CLIENT_ID, secret)."""
        return cls(
            engine=engine,
            base_url=settings.api_base_url,
            client_id=settings.client_id,
            client_secret=settings.client_secrets[0] if settings.client_secrets else None,
            cipher=TokenCipher(settings.token_encryption_keys),
            paths=ApiPaths(settings.api_version),
        )

    @property
    def sdk(self) -> _OAuthSdk:
        """The SDK's OAuth API objects, created on first use."""
        if self._sdk is None:
            client = sdk_client(self.base_url)
            self._sdk = _OAuthSdk(access_tokens=client.oauth.access_tokens_api)
        return self._sdk

    def token_for(self, portal_id: int) -> str:
        """A valid access token for the portal, refreshed first when it expires within 5 min."""
        row = self._token_row(portal_id)
        if row is None:
            raise NoToken(
                f"no HubSpot token for portal {portal_id}: set HUBSPOT_ACCESS_TOKEN or install"
                " the app in that portal (/oauth/install)"
            )
        if row.needs_reinstall:
            raise NeedsReinstall(f"portal {portal_id} must install the app again")
        if row.expires_at - REFRESH_MARGIN > utcnow():
            return str(row.access_token)
        return self.refresh(portal_id)

    def _token_row(self, portal_id: int, connection: sa.Connection | None = None) -> Any:
        """The portal's row with its tokens opened (None: not installed)."""
        query = sa.text("SELECT * FROM hubspot_tokens WHERE portal_id = :p")
        if connection is not None:
            row = connection.execute(query, {"p": portal_id}).first()
        else:
            with self.engine.connect() as own:
                row = own.execute(query, {"p": portal_id}).first()
        if row is None:
            return None
        return _Stored(
            access_token=_open(self.cipher, portal_id, str(row.access_token)),
            refresh_token=_open(self.cipher, portal_id, str(row.refresh_token)),
            expires_at=row.expires_at,
            needs_reinstall=row.needs_reinstall,
        )

    def refresh(self, portal_id: int, *, force: bool = False) -> str:
        """Refresh the portal's OAuth tokens; one process at a time per portal."""
        # Everything under the lock uses the lock's own (autocommit) connection: waiting
        # threads each hold one, so asking the pool for a second could starve the holder.
        with self._refresh_lock(portal_id) as connection:
            row = self._token_row(portal_id, connection)
            if row is None:
                raise NoToken(f"no OAuth install for portal {portal_id}")
            if row.needs_reinstall:
                raise NeedsReinstall(f"portal {portal_id} must install the app again")
            # Someone else may have refreshed while we waited for the lock.
            fresh = row.expires_at - REFRESH_MARGIN > utcnow()
            if fresh and not force:
                return str(row.access_token)
            if not self.cipher.can_seal:  # a refreshed token that cannot be stored is lost
                raise TokenKeyError("TOKEN_ENCRYPTION_KEY is not set: tokens cannot be stored")
            try:
                tokens = self._grant(
                    grant_type="refresh_token", refresh_token=str(row.refresh_token)
                )
            except HubSpotError as exc:
                if isinstance(exc, HubSpotUnavailable):
                    raise
                _mark_reinstall(connection, portal_id, str(exc))
                raise NeedsReinstall(
                    f"refreshing portal {portal_id}'s token failed: {exc}"
                ) from None
            save_tokens(connection, portal_id, tokens, cipher=self.cipher)
            log.info("hubspot_token_refreshed", extra={"portal_id": portal_id})
            return tokens.access_token

    @contextmanager
    def _refresh_lock(self, portal_id: int) -> Iterator[sa.Connection]:
        with self.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(
                sa.text("SELECT pg_advisory_lock(:ns, :p)"),
                {"ns": _REFRESH_LOCK & 0x7FFFFFFF, "p": portal_id % 2**31},
            )
            try:
                yield connection
            finally:
                connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:ns, :p)"),
                    {"ns": _REFRESH_LOCK & 0x7FFFFFFF, "p": portal_id % 2**31},
                )

    def _grant(self, **form: str) -> Tokens:
        if not self.client_id or not self.client_secret:
            raise HubSpotError("OAuth needs HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET")
        try:
            response, _, _ = send(
                self.base_url,
                "POST",
                self.paths.oauth_token(),
                form={"client_id": self.client_id, "client_secret": self.client_secret, **form},
            )
        except TRANSPORT_ERRORS as exc:
            raise HubSpotUnavailable(f"oauth token: {type(exc).__name__}") from None
        except Exception as exc:
            if not is_api_exception(exc):
                raise
            status = status_of(exc) or 0
            message, category = error_text(exc)
            kind = HubSpotUnavailable if status >= 500 or status == 429 else HubSpotError
            raise kind(
                f"oauth token: {status} {category} {message}".strip(), status=status
            ) from None
        try:
            return Tokens(
                access_token=str(response["access_token"]),
                refresh_token=str(response["refresh_token"]),
                expires_at=utcnow() + timedelta(seconds=int(response["expires_in"])),
            )
        except (KeyError, TypeError, ValueError):
            raise HubSpotUnavailable("oauth token: the answer carries no token") from None

    def exchange_code(self, code: str, redirect_uri: str) -> tuple[int, Tokens, str]:
        """OAuth: trade an authorization code for tokens; returns (portal id, tokens, scopes)."""
        tokens = self._grant(grant_type="authorization_code", code=code, redirect_uri=redirect_uri)
        try:
            info = self.sdk.access_tokens.get(tokens.access_token, _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            if not is_api_exception(exc) and not isinstance(exc, TRANSPORT_ERRORS):
                raise
            raise HubSpotError("oauth: could not read the new token's portal") from None
        scopes = " ".join(getattr(info, "scopes", None) or [])
        return int(info.hub_id), tokens, scopes

    def install(self, code: str, redirect_uri: str) -> int:
        """The install's last step: trade the code for tokens and store them; the portal id.

        Raises HubSpotError (storing nothing) when HubSpot does not accept the code, and
        TokenKeyError (before asking HubSpot) when there is no key to seal the tokens with.
        """
        if not self.cipher.can_seal:
            raise TokenKeyError("TOKEN_ENCRYPTION_KEY is not set: tokens cannot be stored")
        portal_id, tokens, scopes = self.exchange_code(code, redirect_uri)
        save_tokens(self.engine, portal_id, tokens, scopes, cipher=self.cipher)
        return portal_id


@dataclass(frozen=True, slots=True)
class _Stored:
    """A hubspot_tokens row with its tokens opened."""

    access_token: str
    refresh_token: str
    expires_at: datetime
    needs_reinstall: bool


def _open(cipher: TokenCipher, portal_id: int, stored: str) -> str:
    if not is_sealed(stored) and portal_id not in cipher.warned_plaintext:
        cipher.warned_plaintext.add(portal_id)
        log.warning(
            "hubspot_token_not_encrypted",
            extra={"portal_id": portal_id, "fix": "run `hubspot-webhooks rotate-token-key`"},
        )
    try:
        return cipher.open(stored)
    except (NoKey, WrongKey) as exc:
        raise TokenKeyError(f"portal {portal_id}'s OAuth tokens: {exc}") from None


def save_tokens(
    bind: sa.Engine | sa.Connection,
    portal_id: int,
    tokens: Tokens,
    scopes: str | None = None,
    *,
    cipher: TokenCipher,
) -> None:
    """Store a portal's OAuth tokens sealed with `cipher`'s first key (an install, or a
    refresh); clears needs_reinstall.

    Given an engine, in a transaction of its own; given a connection, on it (autocommit).
    """
    if isinstance(bind, sa.Engine):
        with bind.begin() as connection:
            save_tokens(connection, portal_id, tokens, scopes, cipher=cipher)
        return
    try:
        access, refresh = cipher.seal(tokens.access_token), cipher.seal(tokens.refresh_token)
    except NoKey as exc:
        raise TokenKeyError(str(exc)) from None
    bind.execute(
        sa.text(
            """
            INSERT INTO hubspot_tokens
                (portal_id, access_token, refresh_token, expires_at, scopes)
            VALUES (:p, :a, :r, :x, coalesce(:s, ''))
            ON CONFLICT (portal_id) DO UPDATE
            SET access_token = EXCLUDED.access_token,
                refresh_token = EXCLUDED.refresh_token,
                expires_at = EXCLUDED.expires_at,
                scopes = coalesce(:s, hubspot_tokens.scopes),
                needs_reinstall = false,
                last_error = NULL,
                updated_at = now()
            """
        ),
        {"p": portal_id, "a": access, "r": refresh, "x": tokens.expires_at, "s": scopes},
    )


def _mark_reinstall(connection: sa.Connection, portal_id: int, error: str) -> None:
    connection.execute(
        sa.text(
            "UPDATE hubspot_tokens SET needs_reinstall = true, last_error = :e,"
            " updated_at = now() WHERE portal_id = :p"
        ),
        {"p": portal_id, "e": error[:500]},
    )
    log.error("hubspot_needs_reinstall", extra={"portal_id": portal_id})


def portals_needing_reinstall(engine: sa.Engine) -> list[int]:
    """Portals whose OAuth tokens stopped working."""
    with engine.connect() as connection:
        return list(
            connection.scalars(
                sa.text("SELECT portal_id FROM hubspot_tokens WHERE needs_reinstall ORDER BY 1")
            )
        )


# --- keys ------------------------------------------------------------------------------------

_STORED_ROWS = "SELECT portal_id, access_token, refresh_token FROM hubspot_tokens ORDER BY 1"


@dataclass(frozen=True, slots=True)
class KeyUse:
    """Which key opens each portal's stored tokens: the first, an older one, none of them, or
    no key at all (plaintext, stored before encryption)."""

    first: list[int] = field(default_factory=list)
    older: list[int] = field(default_factory=list)
    plaintext: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)

    def add(self, cipher: TokenCipher, portal_id: int, *stored: str) -> None:
        """Count one portal's stored tokens."""
        if not all(is_sealed(value) for value in stored):
            self.plaintext.append(portal_id)
            return
        keys = {cipher.key_index(value) for value in stored}
        if None in keys:
            self.unreadable.append(portal_id)
        else:
            (self.first if keys == {0} else self.older).append(portal_id)


def key_use(engine: sa.Engine, cipher: TokenCipher) -> KeyUse:
    """How the stored tokens are sealed (for `doctor`)."""
    use = KeyUse()
    with engine.connect() as connection:
        for row in connection.execute(sa.text(_STORED_ROWS)):
            use.add(cipher, row.portal_id, row.access_token, row.refresh_token)
    return use


def reseal_tokens(engine: sa.Engine, cipher: TokenCipher) -> KeyUse:
    """Seal every portal's tokens with the first key, plaintext rows included, in one
    transaction; returns how they were sealed before. Raises TokenKeyError, changing nothing,
    when no key is configured or a row opens with none of the keys.

    The rows stay locked until the commit, so a refresh meanwhile waits and writes after.
    """
    if not cipher.can_seal:
        raise TokenKeyError("TOKEN_ENCRYPTION_KEY is not set: there is no key to seal with")
    before = KeyUse()
    with engine.begin() as connection:
        rows = connection.execute(sa.text(_STORED_ROWS + " FOR UPDATE")).all()
        for row in rows:
            before.add(cipher, row.portal_id, row.access_token, row.refresh_token)
        if before.unreadable:
            raise TokenKeyError(
                "no TOKEN_ENCRYPTION_KEY key opens the tokens of portals "
                + ", ".join(map(str, before.unreadable))
            )
        if rows:
            connection.execute(
                sa.text(
                    "UPDATE hubspot_tokens SET access_token = :a, refresh_token = :r"
                    " WHERE portal_id = :p"
                ),
                [
                    {
                        "p": row.portal_id,
                        "a": cipher.reseal(row.access_token),
                        "r": cipher.reseal(row.refresh_token),
                    }
                    for row in rows
                ],
            )
    return before
