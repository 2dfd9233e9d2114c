"""A fake HubSpot at the wire: a real HTTP server on 127.0.0.1 that speaks HubSpot's JSON.

`hubspot-api-client` and our own retry code run against it for real (STYLE.md, Tests):

    with FakeHubSpot() as fake:
        fake.add_token("pat-na1-test", portal_id=62515)
        fake.seed(62515, "contacts", [{"id": "101", "properties": {"email": "a@example.com"}}])
        client = hubspot.Client.create(access_token="pat-na1-test", host=fake.url)
        client.crm.contacts.basic_api.get_by_id("101")

What it serves (HUBSPOT.md §4): objects get/list/create/update/archive, batch read (100 ids,
207 with OBJECT_NOT_FOUND errors), search (200 per page, the 10,000-result cap, filters and
sorts, its own per-second limit and no rate-limit headers), pipelines, OAuth (code and
refresh grants, token introspection) and private app token info. Every authenticated call goes
through a rolling ten-second window per app per account with real 429s and Retry-After, and the
X-HubSpot-RateLimit-* headers (the daily ones only for private-app tokens, as HubSpot does).
Switches inject 5xx, latency and dropped connections, and lose the answer to a request that
was carried out (a create stored, then the connection closed or a 5xx sent); every call is
recorded. Search also takes HubSpot's `associations.{object type}` pseudo-property in filters.
Both path families are served by the same handlers: the date-based paths of HUBSPOT_API_VERSION
(`/crm/objects/2026-03/...`, `/crm/pipelines/2026-03/...`, `/oauth/2026-03/token`) are routed as
their `/crm/v3/...` and `/oauth/v1/...` twins (`legacy_path`); a call is recorded with the path
it came on, and path prefixes in switches and `count` match either form.
The Webhooks Journal (its endpoints and the file URLs of its entries) is `fake.journal`, a
`FakeJournal` (tests/fake_journal.py), checking the client-credentials tokens issued here.

The server runs in its own thread; every method here is safe to call from the test's thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import fnmatch
import functools
import json
import math
import random
import re
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from tests.fake_journal import FakeJournal
from tests.fake_subscriptions import FakeSubscriptions

PAYLOADS = Path(__file__).parent / "payloads"
SEED_FILE = PAYLOADS / "hubspot_seed.json"
DEFAULT_PIPELINE_FILES = {
    "deals": PAYLOADS / "pipelines_deals.json",
    "tickets": PAYLOADS / "pipelines_tickets.json",
}

SEARCH_RESULT_CAP = 10_000  # HUBSPOT.md §4: 10,000 results per search query, 400 past it
SEARCH_PAGE_MAX = 200
LIST_PAGE_MAX = 100
BATCH_READ_MAX = 100
BATCH_READ_WITH_HISTORY_MAX = 50
# Search filter limits since August 2024 (developer changelog, "Expanded Filtering Capabilities").
MAX_FILTER_GROUPS = 5
MAX_FILTERS_PER_GROUP = 10
MAX_FILTERS = 25

_SCOPE_KEY = "fake_hubspot.call"
# Date-based paths (HUBSPOT.md §5) and the legacy twins their handlers are routed under.
_DATED_PATHS = (
    (re.compile(r"^/crm/(objects|pipelines)/20\d\d-\d\d/"), r"/crm/v3/\1/"),
    (re.compile(r"^/crm/associations/20\d\d-\d\d/"), "/crm/v4/associations/"),
    (re.compile(r"^/oauth/20\d\d-\d\d/token$"), "/oauth/v1/token"),
)


def legacy_path(path: str) -> str:
    """The `/crm/v3/...` (or `/crm/v4`, `/oauth/v1`) path a date-based path stands for."""
    for dated, legacy in _DATED_PATHS:
        path, replaced = dated.subn(legacy, path, count=1)
        if replaced:
            break
    return path


_TYPES = (  # plural name (canonical here), singular, object type id
    ("contacts", "contact", "0-1"),
    ("companies", "company", "0-2"),
    ("deals", "deal", "0-3"),
    ("tickets", "ticket", "0-5"),
    ("products", "product", "0-7"),
    ("line_items", "line_item", "0-8"),
    ("quotes", "quote", "0-14"),
    ("tasks", "task", "0-27"),
    ("notes", "note", "0-46"),
    ("meetings", "meeting", "0-47"),
    ("calls", "call", "0-48"),
    ("emails", "email", "0-49"),
)
_TYPE_ALIASES = {alias: name for name, *aliases in _TYPES for alias in (name, *aliases)}
_SINGULAR = {name: singular for name, singular, _ in _TYPES}

# Objects whose creation date property is `createdate`; engagements and custom objects use
# `hs_createdate`. Contacts alone call their modification date `lastmodifieddate`.
_CREATEDATE_TYPES = {
    "contacts",
    "companies",
    "deals",
    "tickets",
    "products",
    "line_items",
    "quotes",
}
_ENGAGEMENTS = {"tasks", "notes", "meetings", "calls", "emails"}

# What HubSpot returns when a read names no properties.
_DEFAULT_PROPERTIES: dict[str, tuple[str, ...]] = {
    "contacts": ("email", "firstname", "lastname"),
    "companies": ("domain", "name"),
    "deals": ("amount", "closedate", "dealname", "dealstage", "pipeline"),
    "tickets": (
        "content",
        "hs_pipeline",
        "hs_pipeline_stage",
        "hs_ticket_category",
        "hs_ticket_priority",
        "subject",
    ),
    "products": ("description", "name", "price"),
    "line_items": ("amount", "hs_product_id", "name", "price", "quantity"),
}

# HUBSPOT_DEFINED association type ids from engagements to the records they sit on.
_ASSOCIATION_TARGETS: dict[tuple[str, int], str] = {
    ("tasks", 204): "contacts",
    ("tasks", 192): "companies",
    ("tasks", 216): "deals",
    ("tasks", 230): "tickets",
    ("notes", 202): "contacts",
    ("notes", 190): "companies",
    ("notes", 214): "deals",
    ("notes", 228): "tickets",
}
_ASSOCIATION_CATEGORIES = {"HUBSPOT_DEFINED", "USER_DEFINED", "INTEGRATOR_DEFINED"}

_NO_CREDENTIALS = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you"
    " can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


def created_property(object_type: str) -> str:
    """The creation-date property of an object type (`createdate` or `hs_createdate`)."""
    return "createdate" if object_type in _CREATEDATE_TYPES else "hs_createdate"


def modified_property(object_type: str) -> str:
    """The last-modified property: `lastmodifieddate` on contacts, else `hs_lastmodifieddate`."""
    return "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"


def iso(ms: int) -> str:
    """Epoch milliseconds as HubSpot writes datetimes: `2026-01-05T09:00:00.000Z`."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_ms(value: datetime | str | int) -> int:
    """Epoch milliseconds from an aware datetime, an ISO 8601 string or a number of ms."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        number = _as_number(value)
        if number is None:
            raise ValueError(f"not a timestamp: {value!r}")
        return int(number)
    if value.tzinfo is None:
        raise ValueError("naive datetime: HubSpot times are UTC")
    return round(value.timestamp() * 1000)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _as_number(value: str) -> float | None:
    """A value as a number: plain numbers, or ISO dates as epoch ms (HubSpot takes both)."""
    try:
        return float(value)
    except ValueError:
        pass
    if len(value) >= 10 and value[4:5] == "-" and value[7:8] == "-":
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp() * 1000
    return None


def _id_key(object_id: str) -> tuple[int, int, str]:
    return (0, int(object_id), "") if object_id.isdigit() else (1, 0, object_id)


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() == "true"


def _correlation_id() -> str:
    return str(uuid.uuid4())


class Call(NamedTuple):
    """One request the fake answered (status 0: the connection was dropped without an answer)."""

    method: str
    path: str  # as it came: date-based or legacy
    portal_id: int | None
    status: int

    def under(self, prefix: str) -> bool:
        """Whether the call's path, or its legacy twin, starts with `prefix`."""
        return self.path.startswith(prefix) or legacy_path(self.path).startswith(prefix)


@dataclass(frozen=True, slots=True)
class CreatedObject:
    """A record created through the API (POST /crm/v3/objects/{type}), as the caller sent it."""

    portal_id: int
    object_type: str
    id: str
    properties: dict[str, str | None]
    associations: list[dict[str, Any]]


@dataclass(slots=True)
class _Record:
    id: str
    properties: dict[str, str | None]
    created_ms: int
    updated_ms: int
    archived: bool = False
    archived_ms: int | None = None
    associations: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True)
class _Portal:
    id: int
    objects: dict[str, dict[str, _Record]] = field(default_factory=dict)
    merged: dict[str, dict[str, str]] = field(default_factory=dict)  # type -> old id -> new id
    pipelines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    daily_used: int = 0


@dataclass(slots=True)
class _AccessToken:
    token: str
    portal_id: int
    oauth: bool
    scopes: list[str]
    expires_at: float | None  # time.time(); None: a private-app token, which does not expire


@dataclass(slots=True)
class _Grant:
    """An authorization code or a refresh token."""

    portal_id: int
    scopes: list[str]
    redirect_uri: str | None = None
    revoked: bool = False


@dataclass(slots=True)
class _Fault:
    kind: Literal["fail", "drop", "lose"]
    remaining: int
    status: int  # "lose": 0 closes the connection after the request was carried out
    path_prefix: str | None


@dataclass(slots=True)
class _CallInfo:
    path: str = ""  # as it came (the scope's path is its legacy twin)
    portal_id: int | None = None


@dataclass(slots=True)
class _Caller:
    portal_id: int
    headers: dict[str, str]


class _Window:
    """A rolling window of request times (time.monotonic())."""

    __slots__ = ("hits",)

    def __init__(self) -> None:
        self.hits: deque[float] = deque()

    def take(self, now: float, limit: int, interval: float) -> float | None:
        """Count one request; None when allowed, else the seconds until a slot frees up."""
        while self.hits and self.hits[0] <= now - interval:
            self.hits.popleft()
        if len(self.hits) >= limit:
            return self.hits[0] + interval - now
        self.hits.append(now)
        return None


class _BadRequest(Exception):
    """A request HubSpot would refuse with 400 VALIDATION_ERROR."""


def _protocol_class(transports: dict[tuple[str, int], asyncio.Transport]) -> type[H11Protocol]:
    """uvicorn's h11 protocol, remembering each connection's transport so a request can drop it."""

    class _Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.client is not None:
                transports[self.client] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None:
                transports.pop(self.client, None)
            super().connection_lost(exc)

    return _Protocol


class _Server(uvicorn.Server):
    """uvicorn's server, stopping within milliseconds (its own polls every 0.1 s, then sleeps)."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            for _ in range(20):
                if self.should_exit:
                    return
                await asyncio.sleep(0.005)
            counter = (counter + 1) % 864_000

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        # Requests still running (latency, refresh_delay) are cancelled when the loop closes.
        for server in self.servers:
            await server.wait_closed()


class FakeHubSpot:
    """HubSpot's CRM, OAuth and pipelines APIs on 127.0.0.1, with switches for failures."""

    def __init__(
        self,
        *,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        app_id: int = 424242,
        access_token_ttl: int = 1800,
        rate_limit: int = 100,
        rate_interval: float = 10.0,
        daily_limit: int = 250_000,
        search_rate_limit: int = 5,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.app_id = app_id
        self.access_token_ttl = access_token_ttl
        self.refresh_delay = 0.0  # seconds each refresh grant takes, to make overlaps visible
        self.search_lag = 0.0  # seconds before a change becomes visible to search
        self._rate_limit = rate_limit
        self._rate_interval = rate_interval
        self._daily_limit = daily_limit
        self._search_rate_limit = search_rate_limit

        self._lock = threading.RLock()
        self._portals: dict[int, _Portal] = {}
        self._next_id = 1001
        self._created: list[CreatedObject] = []
        self._tokens: dict[str, _AccessToken] = {}
        self._codes: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _Grant] = {}
        # Client-credentials tokens: token -> (expires at, scopes).
        self._app_tokens: dict[str, tuple[float, tuple[str, ...]]] = {}
        self.app_token_ttl = 1800
        self.app_tokens_issued = 0
        self._refreshes = 0
        self._refreshing = 0
        self._max_refreshing = 0
        self._windows: dict[str, _Window] = {}
        self._search_windows: dict[int, _Window] = {}
        self._faults: list[_Fault] = []
        self._latency = 0.0
        self._latency_prefix: str | None = None
        self._calls: list[Call] = []
        self._default_pipelines = {
            object_type: json.loads(path.read_text())["results"]
            for object_type, path in DEFAULT_PIPELINE_FILES.items()
        }

        self._transports: dict[tuple[str, int], asyncio.Transport] = {}
        self.journal = FakeJournal(self)  # the Webhooks Journal (tests/fake_journal.py)
        self.subscriptions = FakeSubscriptions(app_id, self.app_token_scopes)  # their API
        self._app = self._build_app()
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve on a free port of 127.0.0.1 in a background thread; `url` is set on return."""
        if self._thread is not None:
            raise RuntimeError("FakeHubSpot is already running")
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only then; without
        # it every answer can wait ~40 ms on Nagle and the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            self._asgi,
            http=_protocol_class(self._transports),
            interface="asgi3",
            ws="none",
            loop="asyncio",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
        )
        server = _Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-hubspot", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                sock.close()
                raise RuntimeError("FakeHubSpot did not start")
            time.sleep(0.005)
        self._socket, self._server, self._thread = sock, server, thread
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- data ------------------------------------------------------------------------------

    def add_portal(self, portal_id: int) -> None:
        """Make sure a portal exists (with HubSpot's default deal and ticket pipelines)."""
        with self._lock:
            self._portal(portal_id)

    def seed(
        self, portal_id: int, object_type: str, records: Iterable[Mapping[str, Any]]
    ) -> list[str]:
        """Store records given in HubSpot's JSON shape; returns their ids.

        Each record: `id` (optional), `properties`, `createdAt`/`updatedAt` (ISO, optional;
        else taken from the date properties, else now), `archived`, and `associations`
        as `{"companies": ["201"]}`, linked both ways when the other record already exists.
        """
        kind = self._canonical(object_type, allow_new=True)
        ids: list[str] = []
        with self._lock:
            portal = self._portal(portal_id)
            for data in records:
                ids.append(self._seed_one(portal, kind, data))
        return ids

    def _seed_one(self, portal: _Portal, kind: str, data: Mapping[str, Any]) -> str:
        properties = {
            str(k): None if v is None else str(v)
            for k, v in dict(data.get("properties", {})).items()
        }
        now = _now_ms()
        created = data.get("createdAt") or properties.get(created_property(kind))
        updated = data.get("updatedAt") or properties.get(modified_property(kind))
        created_ms = epoch_ms(created) if created else now
        updated_ms = epoch_ms(updated) if updated else max(created_ms, now)
        object_id = self._claim_id(data.get("id") or properties.get("hs_object_id"))
        for name in ("hs_object_id", created_property(kind), modified_property(kind)):
            properties.pop(name, None)
        record = _Record(object_id, properties, created_ms, updated_ms)
        if data.get("archived"):
            record.archived = True
            archived_at = data.get("archivedAt")
            record.archived_ms = epoch_ms(archived_at) if archived_at else updated_ms
        portal.objects.setdefault(kind, {})[object_id] = record
        for to_type, to_ids in dict(data.get("associations", {})).items():
            for to_id in to_ids:
                self._link(portal, kind, object_id, self._canonical(to_type, allow_new=True), to_id)
        return object_id

    def upsert(
        self,
        portal_id: int,
        object_type: str,
        object_id: str | None = None,
        properties: Mapping[str, Any] | None = None,
        *,
        at: datetime | None = None,
    ) -> str:
        """Create or change a record as a HubSpot user would; bumps updatedAt and lastmodified.

        Returns the record's id. Updating an archived record restores it.
        """
        kind = self._canonical(object_type, allow_new=True)
        values = {k: None if v is None else str(v) for k, v in dict(properties or {}).items()}
        with self._lock:
            portal = self._portal(portal_id)
            store = portal.objects.setdefault(kind, {})
            record = store.get(object_id) if object_id is not None else None
            moment = epoch_ms(at) if at is not None else _now_ms()
            if record is None:
                new_id = self._claim_id(object_id)
                store[new_id] = _Record(new_id, values, moment, moment)
                return new_id
            record.properties.update(values)
            record.updated_ms = max(moment, record.updated_ms + 1)
            record.archived, record.archived_ms = False, None
            return record.id

    def archive(
        self, portal_id: int, object_type: str, object_id: str, *, at: datetime | None = None
    ) -> None:
        """Delete a record as HubSpot does: kept, flagged archived, gone from search and reads."""
        kind = self._canonical(object_type, allow_new=True)
        with self._lock:
            record = self._portal(portal_id).objects.get(kind, {})[object_id]
            moment = epoch_ms(at) if at is not None else _now_ms()
            record.archived, record.archived_ms = True, moment
            record.updated_ms = max(moment, record.updated_ms + 1)

    def merge(self, portal_id: int, object_type: str, primary_id: str, merged_id: str) -> None:
        """Merge `merged_id` into `primary_id`: reads of the old id answer with the primary."""
        kind = self._canonical(object_type, allow_new=True)
        with self._lock:
            portal = self._portal(portal_id)
            store = portal.objects.get(kind, {})
            primary, merged = store[primary_id], store.pop(merged_id)
            aliases = portal.merged.setdefault(kind, {})
            aliases[merged_id] = primary_id
            for old, new in list(aliases.items()):
                if new == merged_id:
                    aliases[old] = primary_id
            ids = [
                i for i in (primary.properties.get("hs_merged_object_ids") or "").split(";") if i
            ]
            primary.properties["hs_merged_object_ids"] = ";".join([*ids, merged_id])
            for to_type, to_ids in merged.associations.items():
                for to_id in to_ids:
                    other = portal.objects.get(to_type, {}).get(to_id)
                    if other is not None and merged_id in other.associations.get(kind, []):
                        other.associations[kind].remove(merged_id)
                    self._link(portal, kind, primary_id, to_type, to_id)
            primary.updated_ms = max(_now_ms(), primary.updated_ms + 1)

    def generate(
        self,
        portal_id: int,
        object_type: str,
        n: int,
        *,
        start: datetime | None = None,
        step: timedelta = timedelta(milliseconds=10),
        properties: Callable[[int], Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Add `n` records fast (25,000 in well under a second), modified `step` apart.

        The first is modified at `start` (default: `n * step` ago, so all are in the past).
        `properties(i)` adds or overrides properties of the i-th record.
        """
        kind = self._canonical(object_type, allow_new=True)
        step_ms = int(step.total_seconds() * 1000)
        first = epoch_ms(start) if start is not None else _now_ms() - n * step_ms
        with self._lock:
            store = self._portal(portal_id).objects.setdefault(kind, {})
            ids: list[str] = []
            for i in range(n):
                object_id = str(self._next_id)
                self._next_id += 1
                values = _generated_properties(kind, object_id, i)
                if properties is not None:
                    values.update(
                        {k: None if v is None else str(v) for k, v in properties(i).items()}
                    )
                moment = first + i * step_ms
                store[object_id] = _Record(object_id, values, moment, moment)
                ids.append(object_id)
        return ids

    def get(self, portal_id: int, object_type: str, object_id: str) -> dict[str, Any] | None:
        """A record as HubSpot's JSON with all its properties, archived or not; None if absent."""
        kind = self._canonical(object_type, allow_new=True)
        with self._lock:
            record = self._portal(portal_id).objects.get(kind, {}).get(object_id)
            if record is None:
                return None
            names = [
                *record.properties,
                "hs_object_id",
                created_property(kind),
                modified_property(kind),
            ]
            return self._render(kind, record, names)

    def created(
        self, object_type: str | None = None, *, portal_id: int | None = None
    ) -> list[CreatedObject]:
        """Records created through the API, oldest first (e.g. the tasks and notes actions made)."""
        kind = self._canonical(object_type, allow_new=True) if object_type else None
        with self._lock:
            return [
                c
                for c in self._created
                if (kind is None or c.object_type == kind)
                and (portal_id is None or c.portal_id == portal_id)
            ]

    def set_pipelines(
        self, portal_id: int, object_type: str, pipelines: Sequence[Mapping[str, Any]]
    ) -> None:
        """Replace an object type's pipelines (HubSpot's JSON: id, label, displayOrder, stages)."""
        kind = self._canonical(object_type, allow_new=True)
        with self._lock:
            self._portal(portal_id).pipelines[kind] = [copy.deepcopy(dict(p)) for p in pipelines]

    def load_seed_file(self, path: Path = SEED_FILE) -> list[int]:
        """Load portals, tokens, records and pipelines from a JSON seed file; returns portal ids.

        Shape: `{"portals": [{"portalId": 1, "tokens": ["pat-..."], "objects": {"contacts":
        [...]}, "pipelines": {"deals": "pipelines_deals.json" or [...]}}]}`; file names are
        relative to the seed file.
        """
        document = json.loads(path.read_text())
        portal_ids: list[int] = []
        for entry in document["portals"]:
            portal_id = int(entry["portalId"])
            self.add_portal(portal_id)
            for token in entry.get("tokens", []):
                self.add_token(token, portal_id)
            for object_type, records in entry.get("objects", {}).items():
                self.seed(portal_id, object_type, records)
            for object_type, given in entry.get("pipelines", {}).items():
                pipelines = (
                    json.loads((path.parent / given).read_text())["results"]
                    if isinstance(given, str)
                    else given
                )
                self.set_pipelines(portal_id, object_type, pipelines)
            portal_ids.append(portal_id)
        return portal_ids

    # --- tokens ----------------------------------------------------------------------------

    def add_token(
        self,
        token: str,
        portal_id: int,
        *,
        scopes: Sequence[str] = (),
        expires_in: int | None = None,
        oauth: bool = False,
    ) -> None:
        """Accept `token` for `portal_id`: a private-app token by default (never expires)."""
        expires_at = time.time() + expires_in if expires_in is not None else None
        with self._lock:
            self._portal(portal_id)
            self._tokens[token] = _AccessToken(token, portal_id, oauth, list(scopes), expires_at)

    def issue_code(
        self,
        portal_id: int,
        scopes: Sequence[str] = ("oauth", "crm.objects.contacts.read"),
        *,
        redirect_uri: str | None = None,
        code: str | None = None,
    ) -> str:
        """An authorization code, as HubSpot puts on the redirect after a user installs the app."""
        code = code or str(uuid.uuid4())
        with self._lock:
            self._portal(portal_id)
            self._codes[code] = _Grant(portal_id, list(scopes), redirect_uri)
        return code

    def issue_tokens(
        self, portal_id: int, scopes: Sequence[str] = ("oauth", "crm.objects.contacts.read")
    ) -> tuple[str, str]:
        """An OAuth (access token, refresh token) pair, as if the portal had installed the app."""
        refresh_token = f"na1-{uuid.uuid4()}"
        with self._lock:
            self._portal(portal_id)
            self._refresh_tokens[refresh_token] = _Grant(portal_id, list(scopes))
            return self._new_access_token(portal_id, list(scopes)), refresh_token

    def expire_token(self, token: str) -> None:
        """Make an access token expired (401 EXPIRED_AUTHENTICATION from now on)."""
        with self._lock:
            self._tokens[token].expires_at = time.time() - 1

    def revoke_refresh_token(self, token: str) -> None:
        """Revoke a refresh token: refreshing with it answers 400 BAD_REFRESH_TOKEN."""
        with self._lock:
            self._refresh_tokens[token].revoked = True

    @property
    def refresh_count(self) -> int:
        """How many refresh_token grants were asked for."""
        with self._lock:
            return self._refreshes

    @property
    def max_concurrent_refreshes(self) -> int:
        """The most refresh_token grants in flight at once (see `refresh_delay`)."""
        with self._lock:
            return self._max_refreshing

    # --- limits and faults -------------------------------------------------------------------

    def set_rate_limit(
        self,
        max_requests: int | None = None,
        interval_seconds: float | None = None,
        *,
        daily: int | None = None,
        search_per_second: int | None = None,
    ) -> None:
        """Change the limits: per app per account rolling window, daily, and search per second."""
        with self._lock:
            if max_requests is not None:
                self._rate_limit = max_requests
            if interval_seconds is not None:
                self._rate_interval = interval_seconds
            if daily is not None:
                self._daily_limit = daily
            if search_per_second is not None:
                self._search_rate_limit = search_per_second

    def fail_next(self, n: int = 1, status: int = 500, *, path_prefix: str | None = None) -> None:
        """Answer the next `n` requests (under `path_prefix`, if given) with `status`."""
        with self._lock:
            self._faults.append(_Fault("fail", n, status, path_prefix))

    def drop_next(self, n: int = 1, *, path_prefix: str | None = None) -> None:
        """Close the connection of the next `n` requests without sending any response."""
        with self._lock:
            self._faults.append(_Fault("drop", n, 0, path_prefix))

    def lose_answer_next(
        self, n: int = 1, *, status: int = 0, path_prefix: str | None = None
    ) -> None:
        """Carry out the next `n` requests (under `path_prefix`, if given), then lose the answer:
        close the connection (`status` 0) or answer `status` (a 502 or 504 after the create
        landed). The records they create exist, as when HubSpot's answer is lost on the way."""
        with self._lock:
            self._faults.append(_Fault("lose", n, status, path_prefix))

    def latency(self, seconds: float, *, path_prefix: str | None = None) -> None:
        """Delay every request (under `path_prefix`, if given) by `seconds`; 0 turns it off."""
        with self._lock:
            self._latency, self._latency_prefix = seconds, path_prefix

    def reset(self) -> None:
        """Forget faults, latency, rate-limit windows, daily counts, recorded calls and refreshes.

        Records, tokens and pipelines stay.
        """
        with self._lock:
            self._faults.clear()
            self._latency, self._latency_prefix = 0.0, None
            self._windows.clear()
            self._search_windows.clear()
            self._calls.clear()
            self._created.clear()
            self._refreshes = self._max_refreshing = 0
            for portal in self._portals.values():
                portal.daily_used = 0

    # --- observation -------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every request answered so far, oldest first (a copy)."""
        with self._lock:
            return list(self._calls)

    def count(
        self,
        path_prefix: str | None = None,
        *,
        status: int | None = None,
        method: str | None = None,
        portal_id: int | None = None,
    ) -> int:
        """How many recorded calls match every given criterion."""
        with self._lock:
            return sum(
                1
                for c in self._calls
                if (path_prefix is None or c.under(path_prefix))
                and (status is None or c.status == status)
                and (method is None or c.method == method.upper())
                and (portal_id is None or c.portal_id == portal_id)
            )

    # --- internals: store ----------------------------------------------------------------------

    def _portal(self, portal_id: int) -> _Portal:
        portal = self._portals.get(portal_id)
        if portal is None:
            portal = _Portal(portal_id)
            portal.pipelines = copy.deepcopy(self._default_pipelines)
            self._portals[portal_id] = portal
        return portal

    def _claim_id(self, wanted: Any) -> str:
        if wanted is None or wanted == "":
            object_id = str(self._next_id)
            self._next_id += 1
            return object_id
        object_id = str(wanted)
        if object_id.isdigit():
            self._next_id = max(self._next_id, int(object_id) + 1)
        return object_id

    @staticmethod
    def _canonical(object_type: str, *, allow_new: bool = False) -> str:
        known = _TYPE_ALIASES.get(object_type)
        if known is not None:
            return known
        if allow_new or re.fullmatch(r"2-\d+", object_type):
            return object_type
        raise _BadRequest(f"Unable to infer object type from: {object_type}")

    def _link(self, portal: _Portal, kind: str, object_id: str, to_type: str, to_id: str) -> None:
        record = portal.objects.get(kind, {}).get(object_id)
        if record is not None and to_id not in record.associations.setdefault(to_type, []):
            record.associations[to_type].append(to_id)
        other = portal.objects.get(to_type, {}).get(to_id)
        if other is not None and object_id not in other.associations.setdefault(kind, []):
            other.associations[kind].append(object_id)

    def _find(
        self, portal: _Portal, kind: str, key: str, id_property: str | None
    ) -> _Record | None:
        store = portal.objects.get(kind, {})
        if id_property and id_property != "hs_object_id":
            for candidate in store.values():
                if candidate.properties.get(id_property) == key:
                    return candidate
            return None
        record = store.get(key)
        if record is None and key in portal.merged.get(kind, {}):
            record = store.get(portal.merged[kind][key])
        return record

    @staticmethod
    def _value(kind: str, record: _Record, name: str) -> str | None:
        if name == "hs_object_id":
            return record.id
        if name == created_property(kind):
            return iso(record.created_ms)
        if name == modified_property(kind):
            return iso(record.updated_ms)
        return record.properties.get(name)

    def _render(
        self,
        kind: str,
        record: _Record,
        properties: Sequence[str] | None,
        *,
        history: Sequence[str] = (),
        associations: Sequence[str] = (),
    ) -> dict[str, Any]:
        names = set(properties) if properties else set(_DEFAULT_PROPERTIES.get(kind, ()))
        names |= {"hs_object_id", created_property(kind), modified_property(kind)}
        body: dict[str, Any] = {
            "id": record.id,
            "properties": {name: self._value(kind, record, name) for name in sorted(names)},
            "createdAt": iso(record.created_ms),
            "updatedAt": iso(record.updated_ms),
            "archived": record.archived,
        }
        if record.archived_ms is not None:
            body["archivedAt"] = iso(record.archived_ms)
        if history:
            body["propertiesWithHistory"] = {
                name: [
                    {
                        "value": value,
                        "timestamp": iso(record.updated_ms),
                        "sourceType": "API",
                    }
                ]
                for name in history
                if (value := self._value(kind, record, name)) is not None
            }
        linked: dict[str, Any] = {}
        for to in associations:
            to_type = self._canonical(to, allow_new=True)
            ids = record.associations.get(to_type)
            if ids:
                label = f"{_SINGULAR.get(kind, kind)}_to_{_SINGULAR.get(to_type, to_type)}"
                linked[to] = {"results": [{"id": i, "type": label} for i in ids]}
        if linked:
            body["associations"] = linked
        return body

    # --- internals: HTTP -----------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        objects = "/crm/v3/objects/{object_type}"
        return Starlette(
            routes=[
                Route("/oauth/v1/token", self._token, methods=["POST"]),
                Route("/oauth/v1/access-tokens/{token}", self._access_token_info, methods=["GET"]),
                Route(
                    "/oauth/v2/private-apps/get/access-token-info",
                    self._private_app_token_info,
                    methods=["POST"],
                ),
                Route(
                    "/oauth/v1/refresh-tokens/{token}",
                    self._refresh_token_info,
                    methods=["GET", "DELETE"],
                ),
                Route("/crm/v3/pipelines/{object_type}", self._pipelines, methods=["GET"]),
                Route(
                    "/crm/v3/pipelines/{object_type}/{pipeline_id}", self._pipeline, methods=["GET"]
                ),
                Route(objects + "/batch/read", self._batch_read, methods=["POST"]),
                Route(objects + "/search", self._search, methods=["POST"]),
                Route(objects, self._list, methods=["GET"]),
                Route(objects, self._create, methods=["POST"]),
                Route(objects + "/{object_id}", self._get, methods=["GET"]),
                Route(objects + "/{object_id}", self._update, methods=["PATCH"]),
                Route(objects + "/{object_id}", self._delete, methods=["DELETE"]),
                *self.journal.routes(),
                *self.subscriptions.routes(),
            ]
        )

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        method, path = str(scope["method"]), str(scope["path"])
        route = legacy_path(path)
        info = _CallInfo(path=path)
        scope = {**scope, "path": route, "raw_path": route.encode(), _SCOPE_KEY: info}
        with self._lock:
            fault = self._take_fault(path)
            under_latency = Call(method, path, None, 0).under(self._latency_prefix or "")
            delay = self._latency if under_latency else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None and fault.kind == "drop":
            self._record(Call(method, path, None, 0))
            await self._drop(scope)
            return
        if fault is not None and fault.kind == "lose":
            await self._lose_answer(scope, receive, send, fault.status)
            return

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Recorded before the client can see the answer, so tests never race it.
                self._record(Call(method, path, info.portal_id, int(message["status"])))
            await send(message)

        if fault is not None:
            await _injected(fault.status)(scope, receive, send_and_record)
        else:
            await self._app(scope, receive, send_and_record)

    async def _lose_answer(self, scope: Scope, receive: Receive, send: Send, status: int) -> None:
        """Carry the request out, then close the connection or answer `status` instead."""
        method, info = str(scope["method"]), scope[_SCOPE_KEY]
        path = info.path

        async def discard(message: Message) -> None:
            return None

        await self._app(scope, receive, discard)
        self._record(Call(method, path, info.portal_id, status))
        if status:
            await _injected(status)(scope, receive, send)
        else:
            await self._drop(scope)

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.path_prefix is None or Call("", path, None, 0).under(fault.path_prefix):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _drop(self, scope: Scope) -> None:
        client = scope.get("client")
        transport = self._transports.get((client[0], client[1])) if client else None
        if transport is not None:
            transport.close()
        # Let uvicorn see the connection go before this request returns, so it writes nothing.
        await asyncio.sleep(0.01)

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _authorize(self, request: Request, *, search: bool = False) -> _Caller | Response:
        """Check the bearer token and the rate limits; the caller, or the error to answer."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        with self._lock:
            info = self._tokens.get(token)
            if info is None:
                return _error(401, _NO_CREDENTIALS, "INVALID_AUTHENTICATION")
            request.scope[_SCOPE_KEY].portal_id = info.portal_id
            now = time.time()
            if info.expires_at is not None and info.expires_at <= now:
                ago = int(now - info.expires_at)
                message = f"The OAuth token used to make this call expired {ago} second(s) ago."
                return _error(401, message, "EXPIRED_AUTHENTICATION")
            portal = self._portal(info.portal_id)
            daily = not info.oauth  # OAuth calls have no daily limit (developer changelog)
            if daily and portal.daily_used >= self._daily_limit:
                return _rate_limited("You have reached your daily limit.", "DAILY", 3600, {})
            if search:
                return self._take_search_slot(portal, daily)
            key = f"oauth:{info.portal_id}" if info.oauth else f"private:{token}"
            window = self._windows.setdefault(key, _Window())
            wait = window.take(time.monotonic(), self._rate_limit, self._rate_interval)
            headers = {
                "X-HubSpot-RateLimit-Max": str(self._rate_limit),
                "X-HubSpot-RateLimit-Remaining": str(max(0, self._rate_limit - len(window.hits))),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self._rate_interval * 1000)),
            }
            if wait is not None:
                message = "You have reached your ten_secondly_rolling limit."
                return _rate_limited(message, "TEN_SECONDLY_ROLLING", wait, headers)
            if daily:
                portal.daily_used += 1
                headers["X-HubSpot-RateLimit-Daily"] = str(self._daily_limit)
                headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(
                    max(0, self._daily_limit - portal.daily_used)
                )
            return _Caller(info.portal_id, headers)

    def _take_search_slot(self, portal: _Portal, daily: bool) -> _Caller | Response:
        # Search has its own per-account limit and sends no rate-limit headers (HUBSPOT.md §4).
        window = self._search_windows.setdefault(portal.id, _Window())
        wait = window.take(time.monotonic(), self._search_rate_limit, 1.0)
        if wait is not None:
            return _rate_limited("You have reached your secondly limit.", "SECONDLY", wait, {})
        if daily:
            portal.daily_used += 1
        return _Caller(portal.id, {})

    async def _crm(
        self, request: Request, *, search: bool = False
    ) -> tuple[_Caller, str, dict[str, Any]] | Response:
        """Authorize, resolve the object type and read a JSON body if there is one."""
        caller = self._authorize(request, search=search)
        if isinstance(caller, Response):
            return caller
        try:
            kind = self._canonical(request.path_params["object_type"])
        except _BadRequest as exc:
            return _error(400, str(exc), "VALIDATION_ERROR")
        body: dict[str, Any] = {}
        if request.method in ("POST", "PATCH"):
            raw = await request.body()
            try:
                parsed = json.loads(raw or b"{}")
            except ValueError as exc:
                return _error(400, f"Invalid input JSON: {exc}", "VALIDATION_ERROR")
            if not isinstance(parsed, dict):
                return _error(400, "Invalid input JSON: expected an object", "VALIDATION_ERROR")
            body = parsed
        return caller, kind, body

    # --- handlers: objects ---------------------------------------------------------------------

    async def _get(self, request: Request) -> Response:
        context = await self._crm(request)
        if isinstance(context, Response):
            return context
        caller, kind, _ = context
        query = request.query_params
        archived = _flag(query.get("archived"))
        with self._lock:
            portal = self._portal(caller.portal_id)
            record = self._find(
                portal, kind, request.path_params["object_id"], query.get("idProperty")
            )
            if record is None or record.archived != archived:
                return _error(404, "Object not found.", "OBJECT_NOT_FOUND", headers=caller.headers)
            body = self._render(
                kind,
                record,
                _names(query.getlist("properties")),
                history=_names(query.getlist("propertiesWithHistory")),
                associations=_names(query.getlist("associations")),
            )
        return JSONResponse(body, headers=caller.headers)

    async def _list(self, request: Request) -> Response:
        context = await self._crm(request)
        if isinstance(context, Response):
            return context
        caller, kind, _ = context
        query = request.query_params
        try:
            limit = min(int(query.get("limit", "10")), LIST_PAGE_MAX)
            after = _decode_cursor(query.get("after"))
        except ValueError:
            return _error(400, "Invalid limit or after", "VALIDATION_ERROR", headers=caller.headers)
        if limit < 1:
            return _error(400, "limit must be positive", "VALIDATION_ERROR", headers=caller.headers)
        archived = _flag(query.get("archived"))
        with self._lock:
            store = self._portal(caller.portal_id).objects.get(kind, {})
            matching = sorted(
                (r for r in store.values() if r.archived == archived), key=lambda r: _id_key(r.id)
            )
            if after is not None:
                matching = [r for r in matching if _id_key(r.id) >= _id_key(after)]
            results = [
                self._render(
                    kind,
                    r,
                    _names(query.getlist("properties")),
                    history=_names(query.getlist("propertiesWithHistory")),
                    associations=_names(query.getlist("associations")),
                )
                for r in matching[:limit]
            ]
        body: dict[str, Any] = {"results": results}
        if len(matching) > limit:
            cursor = _encode_cursor(matching[limit].id)
            link = f"{self.url}/crm/v3/objects/{request.path_params['object_type']}?after={cursor}"
            body["paging"] = {"next": {"after": cursor, "link": link}}
        return JSONResponse(body, headers=caller.headers)

    async def _batch_read(self, request: Request) -> Response:
        context = await self._crm(request)
        if isinstance(context, Response):
            return context
        caller, kind, body = context
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not all(
            isinstance(i, dict) and "id" in i for i in inputs
        ):
            return _error(
                400, "inputs must be a list of {id}", "VALIDATION_ERROR", headers=caller.headers
            )
        history = _names(body.get("propertiesWithHistory") or [])
        most = BATCH_READ_WITH_HISTORY_MAX if history else BATCH_READ_MAX
        if len(inputs) > most:
            message = f"Too many inputs: {len(inputs)}. The limit is {most} per request."
            return _error(400, message, "VALIDATION_ERROR", headers=caller.headers)
        started = _now_ms()
        archived = _flag(request.query_params.get("archived"))
        results: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        with self._lock:
            portal = self._portal(caller.portal_id)
            for item in inputs:
                key = str(item["id"])
                record = self._find(portal, kind, key, body.get("idProperty"))
                if record is None or record.archived != archived:
                    missing.append(key)
                elif record.id not in results:
                    results[record.id] = self._render(
                        kind, record, _names(body.get("properties") or []), history=history
                    )
        ordered = list(results.values())
        random.Random(len(ordered)).shuffle(ordered)  # HubSpot promises no order
        response: dict[str, Any] = {"status": "COMPLETE", "results": ordered}
        if missing:
            label = _SINGULAR.get(kind, kind).upper()
            response["numErrors"] = 1
            response["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"Could not get some {label} objects, they may be deleted or not"
                    " exist. Check that ids are valid.",
                    "context": {"ids": missing},
                }
            ]
        response["startedAt"] = iso(started)
        response["completedAt"] = iso(max(_now_ms(), started + 1))
        return JSONResponse(response, status_code=207 if missing else 200, headers=caller.headers)

    async def _search(self, request: Request) -> Response:
        context = await self._crm(request, search=True)
        if isinstance(context, Response):
            return context
        caller, kind, body = context
        try:
            limit = int(body.get("limit") or 10)
            offset = int(body.get("after") or 0)
            if limit < 1 or limit > SEARCH_PAGE_MAX:
                raise _BadRequest(f"limit must be between 1 and {SEARCH_PAGE_MAX}, got {limit}")
            if offset < 0:
                raise _BadRequest("after must not be negative")
            if offset + limit > SEARCH_RESULT_CAP:
                raise _BadRequest(
                    f"Search results are capped at {SEARCH_RESULT_CAP}: after ({offset}) plus limit"
                    f" ({limit}) goes past it. Narrow the query with filters instead of paging."
                )
            matches = _compile_filters(body.get("filterGroups") or [])
            sort_name, descending = _sort_spec(body.get("sorts") or [])
        except (_BadRequest, ValueError, TypeError) as exc:
            return _error(400, str(exc), "VALIDATION_ERROR")
        query = str(body.get("query") or "").casefold()
        visible_until = _now_ms() - int(self.search_lag * 1000)
        created, modified = created_property(kind), modified_property(kind)

        def raw(record: _Record, name: str) -> str | tuple[str, ...] | None:
            if name.startswith("associations."):
                # HubSpot's pseudo-property: the ids of the records of that type it is linked to.
                to_type = _TYPE_ALIASES.get(name.partition(".")[2])
                return tuple(record.associations.get(to_type, ())) if to_type else ()
            # Dates as epoch ms: compares like HubSpot's and avoids parsing 25,000 ISO strings.
            if name == created:
                return str(record.created_ms)
            if name == modified:
                return str(record.updated_ms)
            return self._value(kind, record, name)

        with self._lock:
            store = self._portal(caller.portal_id).objects.get(kind, {})
            found = [
                r
                for r in store.values()
                if not r.archived
                and r.updated_ms <= visible_until
                and matches(functools.partial(raw, r))
                and (not query or any(query in (v or "").casefold() for v in r.properties.values()))
            ]
            found.sort(key=lambda r: _id_key(r.id))
            if sort_name is not None:
                # One sort property; records without a value come last, ties stay in id order.
                def value(record: _Record) -> str | None:
                    found_value = raw(record, sort_name)
                    return None if isinstance(found_value, tuple) else found_value

                present = [r for r in found if value(r) is not None]
                absent = [r for r in found if value(r) is None]
                present.sort(key=lambda r: _sort_key(value(r)), reverse=descending)
                found = present + absent
            page = [
                self._render(kind, r, _names(body.get("properties") or []))
                for r in found[offset : offset + limit]
            ]
        response: dict[str, Any] = {"total": len(found), "results": page}
        if offset + limit < len(found):
            response["paging"] = {"next": {"after": str(offset + limit)}}
        return JSONResponse(response)

    async def _create(self, request: Request) -> Response:
        context = await self._crm(request)
        if isinstance(context, Response):
            return context
        caller, kind, body = context
        properties = body.get("properties")
        associations = body.get("associations") or []
        if not isinstance(properties, dict) or not isinstance(associations, list):
            return _error(
                400, "properties must be an object", "VALIDATION_ERROR", headers=caller.headers
            )
        values = {str(k): None if v is None else str(v) for k, v in properties.items()}
        if kind in _ENGAGEMENTS and not values.get("hs_timestamp"):
            # Engagements need hs_timestamp (HubSpot's tasks and notes API guides).
            return _error(
                400,
                "Property values were not valid: hs_timestamp is required",
                "VALIDATION_ERROR",
                headers=caller.headers,
            )
        with self._lock:
            portal = self._portal(caller.portal_id)
            try:
                targets = [self._association_target(portal, kind, a) for a in associations]
            except _BadRequest as exc:
                return _error(400, str(exc), "VALIDATION_ERROR", headers=caller.headers)
            now = _now_ms()
            object_id = self._claim_id(None)
            record = _Record(object_id, values, now, now)
            portal.objects.setdefault(kind, {})[object_id] = record
            for to_type, to_id in targets:
                self._link(portal, kind, object_id, to_type, to_id)
            self._created.append(
                CreatedObject(caller.portal_id, kind, object_id, dict(values), list(associations))
            )
            rendered = self._render(kind, record, list(values))
        return JSONResponse(rendered, status_code=201, headers=caller.headers)

    def _association_target(self, portal: _Portal, kind: str, association: Any) -> tuple[str, str]:
        try:
            to_id = str(association["to"]["id"])
            types = association["types"]
            type_ids = [(t["associationCategory"], int(t["associationTypeId"])) for t in types]
        except (KeyError, TypeError, ValueError):
            raise _BadRequest(
                "associations need to.id and types[{associationCategory, associationTypeId}]"
            ) from None
        if not type_ids or any(category not in _ASSOCIATION_CATEGORIES for category, _ in type_ids):
            raise _BadRequest(
                "associationCategory must be HUBSPOT_DEFINED, USER_DEFINED or INTEGRATOR_DEFINED"
            )
        to_type = _ASSOCIATION_TARGETS.get((kind, type_ids[0][1]))
        candidates = [to_type] if to_type else list(portal.objects)
        for candidate in candidates:
            record = portal.objects.get(candidate, {}).get(to_id)
            if record is not None and not record.archived:
                return candidate, to_id
        raise _BadRequest(f"One or more associations are invalid: no {to_type or 'record'} {to_id}")

    async def _update(self, request: Request) -> Response:
        context = await self._crm(request)
        if isinstance(context, Response):
            return context
        caller, kind, body = context
        properties = body.get("properties")
        if not isinstance(properties, dict):
            return _error(
                400, "properties must be an object", "VALIDATION_ERROR", headers=caller.headers
            )
        with self._lock:
            portal = self._portal(caller.portal_id)
            key = request.path_params["object_id"]
            record = self._find(portal, kind, key, request.query_params.get("idProperty"))
            if record is None or record.archived:
                return _error(404, "Object not found.", "OBJECT_NOT_FOUND", headers=caller.headers)
            record.properties.update(
                {str(k): None if v is None else str(v) for k, v in properties.items()}
            )
            record.updated_ms = max(_now_ms(), record.updated_ms + 1)
            rendered = self._render(kind, record, list(record.properties))
        return JSONResponse(rendered, headers=caller.headers)

    async def _delete(self, request: Request) -> Response:
        context = await self._crm(request)
        if isinstance(context, Response):
            return context
        caller, kind, _ = context
        with self._lock:
            record = self._find(
                self._portal(caller.portal_id), kind, request.path_params["object_id"], None
            )
            if record is not None and not record.archived:
                now = _now_ms()
                record.archived, record.archived_ms = True, now
                record.updated_ms = max(now, record.updated_ms + 1)
        return Response(status_code=204, headers=caller.headers)

    # --- handlers: pipelines -------------------------------------------------------------------

    async def _pipelines(self, request: Request) -> Response:
        context = await self._crm(request)
        if isinstance(context, Response):
            return context
        caller, kind, _ = context
        with self._lock:
            pipelines = self._portal(caller.portal_id).pipelines.get(kind, [])
            body = {"results": copy.deepcopy(pipelines)}
        return JSONResponse(body, headers=caller.headers)

    async def _pipeline(self, request: Request) -> Response:
        context = await self._crm(request)
        if isinstance(context, Response):
            return context
        caller, kind, _ = context
        wanted = request.path_params["pipeline_id"]
        with self._lock:
            for pipeline in self._portal(caller.portal_id).pipelines.get(kind, []):
                if pipeline["id"] == wanted:
                    return JSONResponse(copy.deepcopy(pipeline), headers=caller.headers)
        return _error(
            404, f"Pipeline {wanted} not found", "OBJECT_NOT_FOUND", headers=caller.headers
        )

    # --- handlers: OAuth -----------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        grant_type = form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            return _oauth_error("BAD_GRANT_TYPE", "missing or unknown grant type")
        if form.get("client_id") != self.client_id:
            return _oauth_error("BAD_CLIENT_ID", "missing or unknown client id")
        if form.get("client_secret") != self.client_secret:
            return _oauth_error("BAD_CLIENT_SECRET", "missing or invalid client secret")
        if grant_type == "authorization_code":
            return self._grant_code(form)
        if grant_type == "client_credentials":
            return self._grant_client_credentials(form)
        with self._lock:
            self._refreshes += 1
            self._refreshing += 1
            self._max_refreshing = max(self._max_refreshing, self._refreshing)
        try:
            if self.refresh_delay > 0:
                await asyncio.sleep(self.refresh_delay)
            return self._grant_refresh(form)
        finally:
            with self._lock:
                self._refreshing -= 1

    def _grant_code(self, form: Mapping[str, str]) -> Response:
        with self._lock:
            code = self._codes.pop(form.get("code", ""), None)
            if code is None:
                return _oauth_error("BAD_AUTH_CODE", "missing or unknown auth code")
            if code.redirect_uri is not None and form.get("redirect_uri") != code.redirect_uri:
                return _oauth_error(
                    "BAD_REDIRECT_URI", "redirect_uri does not match the one authorized"
                )
        access_token, refresh_token = self.issue_tokens(code.portal_id, code.scopes)
        return self._token_response(access_token, refresh_token)

    def _grant_client_credentials(self, form: Mapping[str, str]) -> Response:
        """The app's own token (Webhooks Journal and its subscriptions): no refresh token."""
        token = "A" + secrets.token_urlsafe(48)
        with self._lock:
            self.app_tokens_issued += 1
            self._app_tokens[token] = (
                time.time() + self.app_token_ttl,
                tuple((form.get("scope") or "").split()),
            )
        body = {"token_type": "bearer", "access_token": token, "expires_in": self.app_token_ttl}
        return JSONResponse(body)

    def app_token_scopes(self, request: Request) -> tuple[str, ...] | None:
        """The scopes of the live client-credentials token `request` carries (None: no such
        token, or it expired)."""
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        with self._lock:
            found = self._app_tokens.get(token)
        if found is None or found[0] <= time.time():
            return None
        return found[1]

    def expire_app_tokens(self) -> None:
        """Every client-credentials token issued so far stops working (401)."""
        with self._lock:
            self._app_tokens.clear()

    def _grant_refresh(self, form: Mapping[str, str]) -> Response:
        refresh_token = form.get("refresh_token", "")
        with self._lock:
            grant = self._refresh_tokens.get(refresh_token)
            if grant is None or grant.revoked:
                return _oauth_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
            access_token = self._new_access_token(grant.portal_id, grant.scopes)
        # HubSpot keeps the refresh token: the same one comes back.
        return self._token_response(access_token, refresh_token)

    def _new_access_token(self, portal_id: int, scopes: list[str]) -> str:
        token = "C" + secrets.token_urlsafe(48)
        expires_at = time.time() + self.access_token_ttl
        self._tokens[token] = _AccessToken(token, portal_id, True, list(scopes), expires_at)
        return token

    def _token_response(self, access_token: str, refresh_token: str) -> Response:
        return JSONResponse(
            {
                "token_type": "bearer",
                "refresh_token": refresh_token,
                "access_token": access_token,
                "expires_in": self.access_token_ttl,
            }
        )

    async def _access_token_info(self, request: Request) -> Response:
        token = request.path_params["token"]
        with self._lock:
            info = self._tokens.get(token)
            if info is None or not info.oauth or info.expires_at is None:
                return _error(404, "Token not found", "OBJECT_NOT_FOUND")
            body = {
                "token": token,
                "user": f"user@portal-{info.portal_id}.example.com",
                "hub_domain": f"portal-{info.portal_id}.example.com",
                "scopes": info.scopes,
                "hub_id": info.portal_id,
                "app_id": self.app_id,
                "expires_in": max(0, int(info.expires_at - time.time())),
                "user_id": 1_000_000 + info.portal_id % 1_000_000,
                "token_type": "access",
            }
        return JSONResponse(body)

    async def _private_app_token_info(self, request: Request) -> Response:
        """A private app token's portal and scopes: `{"tokenKey": "pat-..."}` in the body."""
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return _error(400, f"Invalid input JSON: {exc}", "VALIDATION_ERROR")
        token = body.get("tokenKey") if isinstance(body, dict) else None
        with self._lock:
            info = self._tokens.get(token) if isinstance(token, str) else None
            if info is None or info.oauth:
                return _error(401, _NO_CREDENTIALS, "INVALID_AUTHENTICATION")
            request.scope[_SCOPE_KEY].portal_id = info.portal_id
            body = {
                "userId": 1_000_000 + info.portal_id % 1_000_000,
                "hubId": info.portal_id,
                "appId": self.app_id,
                "scopes": info.scopes,
            }
        return JSONResponse(body)

    async def _refresh_token_info(self, request: Request) -> Response:
        token = request.path_params["token"]
        with self._lock:
            grant = self._refresh_tokens.get(token)
            if grant is None or grant.revoked:
                return _error(404, "Token not found", "OBJECT_NOT_FOUND")
            if request.method == "DELETE":
                grant.revoked = True
                return Response(status_code=204)
            body = {
                "token": token,
                "user": f"user@portal-{grant.portal_id}.example.com",
                "hub_domain": f"portal-{grant.portal_id}.example.com",
                "scopes": grant.scopes,
                "hub_id": grant.portal_id,
                "client_id": self.client_id,
                "user_id": 1_000_000 + grant.portal_id % 1_000_000,
                "token_type": "refresh",
            }
        return JSONResponse(body)


# --- module helpers ----------------------------------------------------------------------------


def _error(
    status: int, message: str, category: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {
        "status": "error",
        "message": message,
        "correlationId": _correlation_id(),
        "category": category,
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _oauth_error(status: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"status": status, "message": message, "correlationId": _correlation_id()}, status_code=400
    )


def _rate_limited(
    message: str, policy: str, wait: float, headers: Mapping[str, str]
) -> JSONResponse:
    body = {
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": _correlation_id(),
        "policyName": policy,
    }
    retry_after = str(max(1, math.ceil(wait)))
    return JSONResponse(body, status_code=429, headers={**headers, "Retry-After": retry_after})


def _injected(status: int) -> Response:
    """The answer to a request `fail_next` chose."""
    if status == 429:
        return _rate_limited(
            "You have reached your ten_secondly_rolling limit.", "TEN_SECONDLY_ROLLING", 1, {}
        )
    if status in (502, 503, 504):
        # HubSpot's edge answers gateway errors with HTML, not JSON.
        return HTMLResponse(
            f"<html><body><h1>{status} Service Unavailable</h1></body></html>", status
        )
    category = "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR"
    return _error(status, "internal error" if status >= 500 else "injected error", category)


def _names(values: Iterable[Any]) -> list[str]:
    """Property names from repeated and/or comma-separated parameters."""
    return [name.strip() for value in values for name in str(value).split(",") if name.strip()]


def _encode_cursor(object_id: str) -> str:
    return base64.urlsafe_b64encode(object_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(f"bad cursor {cursor!r}") from None


def _sort_key(value: str | None) -> tuple[int, float, str]:
    if value is None:
        return (2, 0.0, "")
    number = _as_number(value)
    return (0, number, "") if number is not None else (1, 0.0, value.casefold())


def _sort_spec(sorts: Sequence[Any]) -> tuple[str | None, bool]:
    """The property to sort on and whether descending, from `"name"`, `"-name"` or objects."""
    if not sorts:
        return None, False
    first = sorts[0]
    if isinstance(first, str):
        return (first[1:], True) if first.startswith("-") else (first, False)
    if isinstance(first, dict) and "propertyName" in first:
        direction = str(first.get("direction", "ASCENDING")).upper()
        if direction not in ("ASCENDING", "DESCENDING"):
            raise _BadRequest(f"Unknown sort direction {direction}")
        return str(first["propertyName"]), direction == "DESCENDING"
    raise _BadRequest("sorts must be property names or {propertyName, direction}")


# A property's value; a tuple for a pseudo-property holding several (associations.{type}).
Lookup = Callable[[str], str | tuple[str, ...] | None]


def _compile_filters(groups: Sequence[Any]) -> Callable[[Lookup], bool]:
    """filterGroups as a predicate: groups are ORed, filters within a group ANDed."""
    if len(groups) > MAX_FILTER_GROUPS:
        raise _BadRequest(f"Too many filter groups: {len(groups)} (max {MAX_FILTER_GROUPS})")
    compiled: list[list[Callable[[Lookup], bool]]] = []
    total = 0
    for group in groups:
        filters = group.get("filters") if isinstance(group, dict) else None
        if not isinstance(filters, list):
            raise _BadRequest("each filter group needs a list of filters")
        if len(filters) > MAX_FILTERS_PER_GROUP:
            raise _BadRequest(
                f"Too many filters in a group: {len(filters)} (max {MAX_FILTERS_PER_GROUP})"
            )
        total += len(filters)
        compiled.append([_compile_filter(f) for f in filters])
    if total > MAX_FILTERS:
        raise _BadRequest(f"Too many filters: {total} (max {MAX_FILTERS})")
    if not compiled:
        return lambda lookup: True
    return lambda lookup: any(all(test(lookup) for test in group) for group in compiled)


def _compile_filter(spec: Any) -> Callable[[Lookup], bool]:
    if not isinstance(spec, dict) or "propertyName" not in spec or "operator" not in spec:
        raise _BadRequest("a filter needs propertyName and operator")
    name, operator = str(spec["propertyName"]), str(spec["operator"])
    check = _OPERATORS.get(operator)
    if check is None:
        raise _BadRequest(f"Unknown filter operator {operator}")
    operand = _Operand(
        str(spec.get("value", "")),
        str(spec.get("highValue", "")),
        tuple(str(v) for v in spec.get("values") or []),
    )

    def test(lookup: Lookup) -> bool:
        actual = lookup(name)
        if isinstance(actual, tuple):  # several values: one that passes is enough
            return any(check(v, operand) for v in actual) if actual else check(None, operand)
        return check(actual, operand)

    return test


@dataclass(frozen=True, slots=True)
class _Operand:
    value: str
    high: str
    values: tuple[str, ...]


def _ordered(test: Callable[[int], bool]) -> Callable[[str | None, _Operand], bool]:
    def check(actual: str | None, operand: _Operand) -> bool:
        outcome = _compare(actual, operand.value)
        return outcome is not None and test(outcome)

    return check


def _between(actual: str | None, operand: _Operand) -> bool:
    above, below = _compare(actual, operand.value), _compare(actual, operand.high)
    return above is not None and below is not None and above >= 0 >= below


def _contains_token(actual: str | None, operand: _Operand) -> bool:
    pattern = operand.value.casefold()
    pattern = pattern if "*" in pattern else f"*{pattern}*"
    return fnmatch.fnmatchcase((actual or "").casefold(), pattern)


_OPERATORS: dict[str, Callable[[str | None, _Operand], bool]] = {
    "EQ": lambda actual, operand: _compare(actual, operand.value) == 0,
    "NEQ": lambda actual, operand: _compare(actual, operand.value) != 0,
    "LT": _ordered(lambda c: c < 0),
    "LTE": _ordered(lambda c: c <= 0),
    "GT": _ordered(lambda c: c > 0),
    "GTE": _ordered(lambda c: c >= 0),
    "BETWEEN": _between,
    "IN": lambda actual, operand: any(_compare(actual, v) == 0 for v in operand.values),
    "NOT_IN": lambda actual, operand: all(_compare(actual, v) != 0 for v in operand.values),
    "HAS_PROPERTY": lambda actual, _: actual not in (None, ""),
    "NOT_HAS_PROPERTY": lambda actual, _: actual in (None, ""),
    "CONTAINS_TOKEN": _contains_token,
    "NOT_CONTAINS_TOKEN": lambda actual, operand: not _contains_token(actual, operand),
}


def _compare(actual: str | None, wanted: str) -> int | None:
    """-1, 0 or 1 (numbers and dates as numbers, else case-insensitive text); None if missing."""
    if actual is None:
        return None
    left, right = _as_number(actual), _as_number(wanted)
    if left is not None and right is not None:
        return (left > right) - (left < right)
    a, b = actual.casefold(), wanted.casefold()
    return (a > b) - (a < b)


def _generated_properties(kind: str, object_id: str, i: int) -> dict[str, str | None]:
    if kind == "contacts":
        return {
            "email": f"contact{object_id}@example.com",
            "firstname": "Contact",
            "lastname": str(i),
        }
    if kind == "companies":
        return {"name": f"Company {i}", "domain": f"company{object_id}.example.com"}
    if kind == "deals":
        return {
            "dealname": f"Deal {i}",
            "amount": str(100 + i),
            "dealstage": "appointmentscheduled",
            "pipeline": "default",
        }
    return {"name": f"{kind} {i}"}
