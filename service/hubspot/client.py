"""The CRM API client, HubSpotApi: every CRM call, and the only writer of `hubspot_api_calls`.

It owns the calls this service makes (batch read, search, create, pipelines), the records they
return, and the rules every call follows: it takes a token (the private app token, else the
portal's OAuth token from oauth.TokenStore, refreshed once on a 401), first reserves a slot in the
portal's shared budget (ratelimit.py, `default_budgets`), blocks the bucket for Retry-After on a
429, retries 5xx and connection errors with backoff and jitter, raises HubSpotError at once on
other 4xx, and counts every attempt by portal, endpoint and outcome (in a transaction of its
own, or within `counting_into` in the caller's next one: `record_calls`). Paths come from
paths.py for HUBSPOT_API_VERSION (date-based like 2026-03, or v3); every call goes through the
SDK's generic request (sdk.send), so both path families parse answers, rate-limit headers and
errors alike.

The per-minute counts (hubspot_api_call_minutes) are partitioned by day of `minute`;
`call_log_partitioning` says how service/partitions.py keeps them: a day's partition is dropped
whole once it is older than API_LOG_RETENTION (no DELETE, whatever the table holds).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests
import sqlalchemy as sa

from service import partitions
from service.hubspot.oauth import NeedsReinstall, NoToken, TokenStore
from service.hubspot.paths import ApiPaths
from service.hubspot.ratelimit import Budget, RateLimiter
from service.hubspot.sdk import (
    TRANSPORT_ERRORS,
    HubSpotError,
    HubSpotUnavailable,
    error_text,
    is_api_exception,
    send,
    status_of,
)
from service.hubspot.sealing import TokenCipher
from service.settings import DEFAULT_API_VERSION, Settings

# What a call may raise is part of this client's API: its callers import those errors from here.
# They live where they are raised: sdk.py (shared with oauth.py, which must not import this
# module) and oauth.py (a portal without usable OAuth tokens).
__all__ = [
    "MAX_TRIES",
    "HubSpotApi",
    "HubSpotError",
    "HubSpotUnavailable",
    "NeedsReinstall",
    "NoToken",
    "Pipeline",
    "Record",
    "SearchPage",
    "call_log_partitioning",
    "default_budgets",
    "from_settings",
    "last_modified_property",
    "ms_of",
    "record_calls",
]

MAX_TRIES = 6
# Attempts by (portal, endpoint, outcome), counted in memory until `record_calls` writes them.
CallCounts = Counter[tuple[int, str, str]]


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
class Stage:
    """One stage of a pipeline."""

    id: str
    label: str


@dataclass(frozen=True, slots=True)
class Pipeline:
    """One pipeline with its stages, as the pipelines API returns it."""

    id: str
    label: str
    stages: list[Stage]


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


def _record(obj: Mapping[str, Any]) -> Record:
    return Record(
        id=int(obj["id"]),
        properties=dict(obj.get("properties") or {}),
        updated_at_ms=_ms(obj.get("updatedAt")),
        archived=bool(obj.get("archived", False)),
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
    token_keys: tuple[str, ...] = field(default=(), repr=False)  # TOKEN_ENCRYPTION_KEY
    sleep: Callable[[float], None] = time.sleep
    paths: ApiPaths = field(default_factory=lambda: ApiPaths(DEFAULT_API_VERSION))
    session: requests.Session = field(default_factory=requests.Session, repr=False)  # pooled
    _tokens: TokenStore | None = field(default=None, init=False, repr=False)
    _observed: dict[tuple[int, str], tuple[int, int]] = field(
        default_factory=dict, init=False, repr=False
    )
    _deferred: threading.local = field(default_factory=threading.local, init=False, repr=False)

    def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> Callable[[str], Any]:
        """The request `call` makes with each attempt's token."""
        return lambda token: send(
            self.base_url, method, path, token=token, json_body=body, session=self.session
        )

    # --- CRM -----------------------------------------------------------------------------

    def batch_read(
        self, portal_id: int, object_type: str, ids: Sequence[int], properties: Sequence[str]
    ) -> tuple[list[Record], list[int]]:
        """Read up to 100 records; returns (records found, ids HubSpot reports missing)."""
        if len(ids) > 100:
            raise ValueError("HubSpot batch read takes at most 100 ids")
        body = {"inputs": [{"id": str(i)} for i in ids], "properties": list(properties)}
        response = self.call(
            portal_id,
            "batch_read",
            self._request("POST", self.paths.batch_read(object_type) + "?archived=false", body),
        )
        records = [_record(r) for r in response.get("results") or []]
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
        prop = last_modified_property(object_type)
        since = {"propertyName": prop, "operator": "GTE", "value": str(since_ms)}
        body: dict[str, Any] = {"filterGroups": [{"filters": [since]}], "limit": limit}
        body["sorts"] = [{"propertyName": prop, "direction": "ASCENDING"}]
        body["properties"], body["after"] = sorted({*properties, prop}), after
        return self.search(portal_id, object_type, body)

    def search(self, portal_id: int, object_type: str, body: Mapping[str, Any]) -> SearchPage:
        """One page of results of a search request (HubSpot's JSON: filterGroups, sorts, after)."""
        response = self.call(
            portal_id,
            "search",
            self._request(
                "POST",
                self.paths.search(object_type),
                {k: v for k, v in body.items() if v is not None},
            ),
            bucket="search",
        )
        following = ((response.get("paging") or {}).get("next") or {}).get("after")
        return SearchPage(
            records=[_record(r) for r in response.get("results") or []],
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
        body = {"properties": properties, "associations": list(associations)}
        created = self.call(
            portal_id,
            f"create_{object_type}",
            self._request("POST", self.paths.objects(object_type), body),
            retry_server_errors=False,  # a POST that may have landed is not repeated blindly
        )
        return _record(created)

    def pipelines(self, portal_id: int, object_type: str = "deals") -> list[Pipeline]:
        """The pipelines of an object type, with their stages."""
        response = self.call(
            portal_id, "pipelines", self._request("GET", self.paths.pipelines(object_type))
        )
        return [
            Pipeline(
                str(p["id"]),
                str(p.get("label") or ""),
                [Stage(str(st["id"]), str(st.get("label") or "")) for st in p.get("stages") or []],
            )
            for p in response.get("results") or []
        ]

    # --- the call loop ---------------------------------------------------------------------

    def call(
        self,
        portal_id: int,
        endpoint: str,
        request: Callable[[str], Any],
        *,
        bucket: str = "api",
        retry_server_errors: bool = True,
    ) -> Any:
        """Run one request (given each attempt's token; answers `(data, status, headers)`) under
        the rate limit, with HubSpot's retry rules."""
        refreshed = False
        for attempt in range(1, MAX_TRIES + 1):
            token = self.token_for(portal_id)
            self.limiter.acquire(portal_id, bucket)
            try:
                data, _, headers = request(token)
            except TRANSPORT_ERRORS as exc:
                self._count(portal_id, endpoint, "connection_error")
                if not retry_server_errors or attempt == MAX_TRIES:
                    raise HubSpotUnavailable(f"{endpoint}: {type(exc).__name__}") from None
                self._backoff(attempt)
                continue
            except Exception as exc:
                if not is_api_exception(exc):
                    raise
                status = status_of(exc) or 0
                message, category = error_text(exc)
                self._count(portal_id, endpoint, str(status))
                if status == 0:  # the SDK's wrapping of a TLS or connection failure
                    if not retry_server_errors or attempt == MAX_TRIES:
                        raise HubSpotUnavailable(f"{endpoint}: connection failed") from None
                    self._backoff(attempt)
                    continue
                if status == 429:
                    self.limiter.block(portal_id, bucket, _retry_after(exc))
                    if attempt == MAX_TRIES:
                        raise HubSpotUnavailable(f"{endpoint}: rate limited", status=429) from None
                    continue
                if status == 401 and not refreshed and self.private_token is None:
                    refreshed = True
                    self.tokens.refresh(portal_id, force=True)
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

    @contextmanager
    def counting_into(self, counts: CallCounts) -> Iterator[None]:
        """Within the block, this thread's calls are counted into `counts`, for the caller to
        write with `record_calls` in a transaction it runs anyway, not each in one of its own."""
        self._deferred.counts = counts
        try:
            yield
        finally:
            self._deferred.counts = None

    def _count(self, portal_id: int, endpoint: str, outcome: str) -> None:
        into: CallCounts | None = getattr(self._deferred, "counts", None)
        if into is not None:
            into[(portal_id, endpoint, outcome)] += 1
            return
        with self.engine.begin() as connection:
            record_calls(connection, Counter({(portal_id, endpoint, outcome): 1}))

    # --- tokens ----------------------------------------------------------------------------

    @property
    def tokens(self) -> TokenStore:
        """The portals' OAuth tokens (with this client's app credentials), created on first use."""
        if self._tokens is None:
            self._tokens = TokenStore(
                engine=self.engine,
                base_url=self.base_url,
                client_id=self.client_id,
                client_secret=self.client_secret,
                cipher=TokenCipher(self.token_keys),
                paths=self.paths,
            )
        return self._tokens

    def token_for(self, portal_id: int) -> str:
        """The private app token, else the portal's OAuth access token (refreshed when due)."""
        if self.private_token is not None:
            return self.private_token
        return self.tokens.token_for(portal_id)


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
        token_keys=settings.token_encryption_keys,
        paths=ApiPaths(settings.api_version),
    )


_COUNT = sa.text(
    "WITH minute AS (INSERT INTO hubspot_api_call_minutes (portal_id, minute, endpoint, outcome,"
    " calls) VALUES (:p, date_trunc('minute', now()), :e, :o, :n) ON CONFLICT (portal_id, minute,"
    " endpoint, outcome) DO UPDATE SET calls = hubspot_api_call_minutes.calls + excluded.calls)"
    " INSERT INTO hubspot_api_calls (portal_id, endpoint, outcome, calls) VALUES (:p, :e, :o, :n)"
    " ON CONFLICT (portal_id, endpoint, outcome)"
    " DO UPDATE SET calls = hubspot_api_calls.calls + excluded.calls, last_at = now()"
)


def record_calls(connection: sa.Connection, counts: CallCounts) -> None:
    """Count calls in all and in their minute (kept API_LOG_RETENTION), in this transaction."""
    for (portal_id, endpoint, outcome), calls in sorted(counts.items()):
        connection.execute(_COUNT, {"p": portal_id, "e": endpoint, "o": outcome, "n": calls})


def call_log_partitioning(
    retention_seconds: float, *, width_seconds: float = partitions.DAY_SECONDS
) -> partitions.Scheme:
    """How hubspot_api_call_minutes is partitioned and kept: a day a partition, three ready
    ahead, each dropped whole once older than the retention (nothing is kept: the totals live
    in hubspot_api_calls)."""
    return partitions.daily(
        "hubspot_api_call_minutes",
        "minute",
        retention_seconds=retention_seconds,
        keep="false",
        key_type="timestamptz",
        width_seconds=width_seconds,
    )


def last_modified_property(object_type: str) -> str:
    """Contacts call it `lastmodifieddate`; every other object `hs_lastmodifieddate`."""
    return "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"


def default_budgets(api: Budget | None = None, search: Budget | None = None) -> dict[str, Budget]:
    """HubSpot's lowest tier: 100 calls per 10 s; search 4 per second (its limit is 5)."""
    return {"api": api or Budget(100, 10_000), "search": search or Budget(4, 1_000)}
