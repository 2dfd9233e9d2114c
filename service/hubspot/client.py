"""The only module that calls HubSpot: hubspot-api-client with tokens, rate limits and retries.

- Tokens: the private app token (HUBSPOT_ACCESS_TOKEN), or per-portal OAuth tokens kept in
  Postgres and refreshed 5 minutes before they expire, one refresh per portal at a time across
  processes (a session-level advisory lock, so no transaction stays open across the call).
- Every call first reserves a slot in the portal's shared budget (service.hubspot.ratelimit); 429 blocks
  the bucket for Retry-After, 5xx and connection errors retry with backoff and jitter, other 4xx
  raise HubSpotError at once. Every call is counted by portal, endpoint and outcome.
- API paths and versions live in the SDK and here only (HUBSPOT.md §4: v3 paths are dated).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
import urllib3

from service.db import utcnow
from service.hubspot.ratelimit import Budget, RateLimiter
from service.settings import Settings

log = logging.getLogger(__name__)

REFRESH_MARGIN = timedelta(minutes=5)
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)
MAX_TRIES = 6
AUTHORIZE_URL = "https://app.hubspot.com/oauth/authorize"
_REFRESH_LOCK = 0x48_53_57_48_02  # advisory lock namespace for token refreshes


class HubSpotError(Exception):
    """HubSpot refused a call in a way retrying will not fix (a 4xx other than 429)."""

    def __init__(self, message: str, *, status: int | None = None, category: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.category = category


class HubSpotUnavailable(HubSpotError):
    """HubSpot kept failing (5xx, connection errors or 429s) after every retry."""


class NeedsReinstall(HubSpotError):
    """The portal's OAuth tokens are revoked or refreshing them fails: install the app again."""


class NoToken(HubSpotError):
    """No access token for this portal: no private app token and no OAuth install."""


@dataclass(frozen=True, slots=True)
class Record:
    """One CRM record as HubSpot returned it."""

    id: int
    properties: dict[str, str | None]
    updated_at_ms: int
    archived: bool = False


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of search results."""

    records: list[Record]
    total: int
    after: str | None


@dataclass(frozen=True, slots=True)
class Tokens:
    """An OAuth token set as HubSpot issued it."""

    access_token: str
    refresh_token: str
    expires_at: datetime


@dataclass(slots=True)
class _Sdk:
    """hubspot-api-client API objects, built once (each property access builds a new pool)."""

    client: Any
    objects_batch: Any
    objects_basic: Any
    objects_search: Any
    pipelines: Any
    oauth_tokens: Any
    oauth_access_tokens: Any


def _sdk(base_url: str) -> _Sdk:
    import hubspot

    # No SDK-level retries: this module decides what is retried, and counts every attempt.
    client = hubspot.Client.create(host=base_url, retry=urllib3.Retry(total=0, redirect=0))
    return _Sdk(
        client=client,
        objects_batch=client.crm.objects.batch_api,
        objects_basic=client.crm.objects.basic_api,
        objects_search=client.crm.objects.search_api,
        pipelines=client.crm.pipelines.pipelines_api,
        oauth_tokens=client.oauth.tokens_api,
        oauth_access_tokens=client.oauth.access_tokens_api,
    )


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _is_api_exception(exc: BaseException) -> bool:
    # Every SDK sub-package has its own ApiException class; they share this shape.
    return (
        type(exc).__name__.endswith("Exception") and hasattr(exc, "status") and hasattr(exc, "body")
    )


def _error_text(exc: BaseException) -> tuple[str, str]:
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


def _retry_after(exc: BaseException) -> float:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return max(0.5, float(value)) if value is not None else 10.0
    except ValueError:
        return 10.0


def ms_of(value: str) -> int:
    """Epoch ms from HubSpot's epoch-ms strings or ISO 8601 times; ValueError otherwise."""
    if value.isdigit():
        return int(value)
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, str) and value:
        try:
            return ms_of(value)
        except ValueError:
            return 0
    return 0


def _unpack(result: Any) -> tuple[Any, Any]:
    """(data, headers) of an SDK `*_with_http_info` result, parsed JSON when not preloaded."""
    if isinstance(result, tuple):
        return result[0], result[2]
    body = result.data
    return (json.loads(body) if body else {}), result.headers


def _record_json(obj: Mapping[str, Any]) -> Record:
    return Record(
        id=int(obj["id"]),
        properties=dict(obj.get("properties") or {}),
        updated_at_ms=_ms(obj.get("updatedAt")),
        archived=bool(obj.get("archived", False)),
    )


def _record(obj: Any) -> Record:
    return Record(
        id=int(obj.id),
        properties=dict(obj.properties or {}),
        updated_at_ms=_ms(obj.updated_at),
        archived=bool(getattr(obj, "archived", False)),
    )


@dataclass
class HubSpotApi:
    """Calls HubSpot for one process. Not shared between threads."""

    engine: sa.Engine
    base_url: str
    limiter: RateLimiter
    private_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    sleep: Callable[[float], None] = time.sleep
    _sdk: _Sdk | None = field(default=None, init=False, repr=False)
    _observed: dict[tuple[int, str], tuple[int, int]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def sdk(self) -> _Sdk:
        """The SDK API objects, created on first use."""
        if self._sdk is None:
            self._sdk = _sdk(self.base_url)
        return self._sdk

    # --- CRM -----------------------------------------------------------------------------

    def batch_read(
        self, portal_id: int, object_type: str, ids: Sequence[int], properties: Sequence[str]
    ) -> tuple[list[Record], list[int]]:
        """Read up to 100 records; returns (records found, ids HubSpot reports missing)."""
        from hubspot.crm.objects import BatchReadInputSimplePublicObjectId

        if len(ids) > 100:
            raise ValueError("HubSpot batch read takes at most 100 ids")
        request = BatchReadInputSimplePublicObjectId(
            inputs=[{"id": str(i)} for i in ids],
            properties=list(properties),
            properties_with_history=[],
        )
        response = self.call(
            portal_id,
            "batch_read",
            lambda auth: self.sdk.objects_batch.read_with_http_info(
                object_type,
                request,
                archived=False,
                _request_auth=auth,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )
        records = [_record(r) for r in response.results or []]
        found = {r.id for r in records}
        missing = [i for i in ids if i not in found]
        return records, missing

    def search_modified_since(
        self,
        portal_id: int,
        object_type: str,
        *,
        since_ms: int,
        properties: Sequence[str],
        after: str | None = None,
        limit: int = 200,
    ) -> SearchPage:
        """Records modified at or after `since_ms`, oldest first (search API, 200 per page)."""
        from hubspot.crm.objects import PublicObjectSearchRequest

        prop = last_modified_property(object_type)
        request = PublicObjectSearchRequest(
            filter_groups=[
                {"filters": [{"propertyName": prop, "operator": "GTE", "value": str(since_ms)}]}
            ],
            sorts=[{"propertyName": prop, "direction": "ASCENDING"}],
            properties=sorted({*properties, prop}),
            limit=limit,
            after=after,
        )
        response = self.call(
            portal_id,
            "search",
            lambda auth: self.sdk.objects_search.do_search_with_http_info(
                object_type,
                request,
                _request_auth=auth,
                _request_timeout=REQUEST_TIMEOUT,
                _preload_content=False,
            ),
            bucket="search",
        )
        following = ((response.get("paging") or {}).get("next") or {}).get("after")
        return SearchPage(
            records=[_record_json(r) for r in response.get("results") or []],
            total=int(response.get("total") or 0),
            after=str(following) if following else None,
        )

    def create_object(
        self,
        portal_id: int,
        object_type: str,
        properties: dict[str, str],
        associations: Sequence[dict[str, Any]] = (),
    ) -> Record:
        """Create a record (tasks, notes, ...) with associations."""
        from hubspot.crm.objects import SimplePublicObjectInputForCreate

        body = SimplePublicObjectInputForCreate(
            properties=properties, associations=list(associations)
        )
        created = self.call(
            portal_id,
            f"create_{object_type}",
            lambda auth: self.sdk.objects_basic.create_with_http_info(
                object_type, body, _request_auth=auth, _request_timeout=REQUEST_TIMEOUT
            ),
            retry_server_errors=False,  # a POST that may have landed is not repeated blindly
        )
        return _record(created)

    def pipelines(self, portal_id: int, object_type: str = "deals") -> list[Any]:
        """The pipelines of an object type, with their stages."""
        response = self.call(
            portal_id,
            "pipelines",
            lambda auth: self.sdk.pipelines.get_all_with_http_info(
                object_type, _request_auth=auth, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return list(response.results or [])

    # --- the call loop ---------------------------------------------------------------------

    def call(
        self,
        portal_id: int,
        endpoint: str,
        request: Callable[[dict[str, str]], Any],
        *,
        bucket: str = "api",
        retry_server_errors: bool = True,
    ) -> Any:
        """Run one SDK `*_with_http_info` call under the rate limit, with HubSpot's retry rules."""
        refreshed = False
        for attempt in range(1, MAX_TRIES + 1):
            token = self.token_for(portal_id)
            self.limiter.acquire(portal_id, bucket)
            auth = {
                "type": "oauth2",
                "in": "header",
                "key": "Authorization",
                "value": f"Bearer {token}",
            }
            try:
                data, headers = _unpack(request(auth))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._count(portal_id, endpoint, "connection_error")
                if not retry_server_errors or attempt == MAX_TRIES:
                    raise HubSpotUnavailable(f"{endpoint}: {type(exc).__name__}") from None
                self._backoff(attempt)
                continue
            except Exception as exc:
                if not _is_api_exception(exc):
                    raise
                status = _status(exc) or 0
                message, category = _error_text(exc)
                self._count(portal_id, endpoint, str(status))
                if status == 0:  # the SDK's wrapping of a TLS or connection failure
                    if not retry_server_errors or attempt == MAX_TRIES:
                        raise HubSpotUnavailable(f"{endpoint}: connection failed") from None
                    self._backoff(attempt)
                    continue
                if status == 429:
                    self.limiter.block(portal_id, bucket, _retry_after(exc))
                    if attempt == MAX_TRIES:
                        raise HubSpotUnavailable(f"{endpoint}: rate limited") from None
                    continue
                if status == 401 and not refreshed and self.private_token is None:
                    refreshed = True
                    self.refresh(portal_id, force=True)
                    continue
                if status >= 500 and retry_server_errors and attempt < MAX_TRIES:
                    self._backoff(attempt)
                    continue
                kind = HubSpotUnavailable if status >= 500 or status == 429 else HubSpotError
                raise kind(
                    f"{endpoint}: HubSpot answered {status} {category} {message}".strip(),
                    status=status,
                    category=category,
                ) from None
            self._count(portal_id, endpoint, "ok")
            self._observe(portal_id, bucket, headers)
            return data
        raise HubSpotUnavailable(f"{endpoint}: gave up after {MAX_TRIES} tries")

    def _backoff(self, attempt: int) -> None:
        self.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random()))  # noqa: S311

    def _observe(self, portal_id: int, bucket: str, headers: Any) -> None:
        if not headers:
            return
        try:
            max_calls = int(headers.get("X-HubSpot-RateLimit-Max"))
            window = int(headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"))
        except (TypeError, ValueError):
            return
        # The headers repeat on every answer: write only what is new to this process.
        if self._observed.get((portal_id, bucket)) != (max_calls, window):
            self.limiter.observe(portal_id, bucket, max_calls, window)
            self._observed[(portal_id, bucket)] = (max_calls, window)

    def _count(self, portal_id: int, endpoint: str, outcome: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO hubspot_api_calls (portal_id, endpoint, outcome, calls)"
                    " VALUES (:p, :e, :o, 1) ON CONFLICT (portal_id, endpoint, outcome)"
                    " DO UPDATE SET calls = hubspot_api_calls.calls + 1, last_at = now()"
                ),
                {"p": portal_id, "e": endpoint, "o": outcome},
            )

    # --- tokens ----------------------------------------------------------------------------

    def token_for(self, portal_id: int) -> str:
        """A valid access token for the portal, refreshed first when it expires within 5 min."""
        if self.private_token is not None:
            return self.private_token
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
        query = sa.text("SELECT * FROM hubspot_tokens WHERE portal_id = :p")
        if connection is not None:
            return connection.execute(query, {"p": portal_id}).first()
        with self.engine.connect() as own:
            return own.execute(query, {"p": portal_id}).first()

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
            try:
                tokens = self._grant(
                    grant_type="refresh_token", refresh_token=str(row.refresh_token)
                )
            except HubSpotError as exc:
                if isinstance(exc, HubSpotUnavailable):
                    raise
                self._mark_reinstall(connection, portal_id, str(exc))
                raise NeedsReinstall(
                    f"refreshing portal {portal_id}'s token failed: {exc}"
                ) from None
            save_tokens(connection, portal_id, tokens)
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

    def _mark_reinstall(self, connection: sa.Connection, portal_id: int, error: str) -> None:
        connection.execute(
            sa.text(
                "UPDATE hubspot_tokens SET needs_reinstall = true, last_error = :e,"
                " updated_at = now() WHERE portal_id = :p"
            ),
            {"p": portal_id, "e": error[:500]},
        )
        log.error("hubspot_needs_reinstall", extra={"portal_id": portal_id})

    def _grant(self, **form: str) -> Tokens:
        if not self.client_id or not self.client_secret:
            raise HubSpotError("OAuth needs HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET")
        try:
            response = self.sdk.oauth_tokens.create(
                client_id=self.client_id,
                client_secret=self.client_secret,
                _request_timeout=REQUEST_TIMEOUT,
                **form,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise HubSpotUnavailable(f"oauth token: {type(exc).__name__}") from None
        except Exception as exc:
            if not _is_api_exception(exc):
                raise
            status = _status(exc) or 0
            message, category = _error_text(exc)
            kind = HubSpotUnavailable if status >= 500 or status == 429 else HubSpotError
            raise kind(
                f"oauth token: {status} {category} {message}".strip(), status=status
            ) from None
        return Tokens(
            access_token=str(response.access_token),
            refresh_token=str(response.refresh_token),
            expires_at=utcnow() + timedelta(seconds=int(response.expires_in)),
        )

    def exchange_code(self, code: str, redirect_uri: str) -> tuple[int, Tokens, str]:
        """OAuth: trade an authorization code for tokens; returns (portal id, tokens, scopes)."""
        tokens = self._grant(grant_type="authorization_code", code=code, redirect_uri=redirect_uri)
        try:
            info = self.sdk.oauth_access_tokens.get(
                tokens.access_token, _request_timeout=REQUEST_TIMEOUT
            )
        except Exception as exc:
            if not _is_api_exception(exc) and not isinstance(
                exc, (urllib3.exceptions.HTTPError, OSError)
            ):
                raise
            raise HubSpotError("oauth: could not read the new token's portal") from None
        scopes = " ".join(getattr(info, "scopes", None) or [])
        return int(info.hub_id), tokens, scopes


def save_tokens(
    bind: sa.Engine | sa.Connection, portal_id: int, tokens: Tokens, scopes: str | None = None
) -> None:
    """Store a portal's OAuth tokens (an install, or a refresh); clears needs_reinstall.

    Given an engine, in a transaction of its own; given a connection, on it (autocommit).
    """
    if isinstance(bind, sa.Engine):
        with bind.begin() as connection:
            save_tokens(connection, portal_id, tokens, scopes)
        return
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
        {
            "p": portal_id,
            "a": tokens.access_token,
            "r": tokens.refresh_token,
            "x": tokens.expires_at,
            "s": scopes,
        },
    )


def from_settings(settings: Settings, engine: sa.Engine) -> HubSpotApi | None:
    """The API client the settings describe, or None when no HubSpot credentials are set."""
    if settings.access_token is None and settings.client_id is None:
        return None
    limiter = RateLimiter(
        engine,
        default_budgets(Budget(*settings.api_rate_limit), Budget(*settings.search_rate_limit)),
    )
    return HubSpotApi(
        engine=engine,
        base_url=settings.api_base_url,
        limiter=limiter,
        private_token=settings.access_token,
        client_id=settings.client_id,
        client_secret=settings.client_secrets[0] if settings.client_secrets else None,
    )


def last_modified_property(object_type: str) -> str:
    """Contacts call it `lastmodifieddate`; every other object `hs_lastmodifieddate`."""
    return "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"


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


def default_budgets(api: Budget | None = None, search: Budget | None = None) -> dict[str, Budget]:
    """HubSpot's lowest tier: 100 calls per 10 s; search 4 per second (its limit is 5)."""
    return {"api": api or Budget(100, 10_000), "search": search or Budget(4, 1_000)}


STATE_TTL_SECONDS = 600


class InvalidState(Exception):
    """An OAuth `state` that this service did not issue, or issued too long ago."""


def sign_state(secret: str, *, now: float, nonce: str) -> str:
    """An expiring OAuth state: `<expires>.<nonce>.<hmac>`, bound to the client secret."""
    expires = str(int(now) + STATE_TTL_SECONDS)
    mac = hmac.new(secret.encode(), f"{expires}.{nonce}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{nonce}.{mac}"


def check_state(secrets: Sequence[str], state: str, *, now: float) -> None:
    """Raise InvalidState unless `state` came from sign_state with one of `secrets` and is fresh."""
    expires, _, rest = state.partition(".")
    nonce, _, mac = rest.rpartition(".")
    if not expires.isdigit() or not nonce or not mac:
        raise InvalidState("malformed state")
    matched = False
    for secret in secrets:
        expected = hmac.new(
            secret.encode(), f"{expires}.{nonce}".encode(), hashlib.sha256
        ).hexdigest()
        matched |= hmac.compare_digest(expected.encode(), mac.encode())
    if not matched:
        raise InvalidState("state was not issued by this service")
    if int(expires) < now:
        raise InvalidState("state expired; start the install again")


def portals_needing_reinstall(engine: sa.Engine) -> list[int]:
    """Portals whose OAuth tokens stopped working."""
    with engine.connect() as connection:
        return list(
            connection.scalars(
                sa.text("SELECT portal_id FROM hubspot_tokens WHERE needs_reinstall ORDER BY 1")
            )
        )
