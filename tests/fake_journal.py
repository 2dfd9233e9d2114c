"""HubSpot's Webhooks Journal (2026-03), faked at the wire inside FakeHubSpot (HUBSPOT.md §5).

    fake.journal.append(62515, [FakeJournal.event("UPDATE", 62515, "0-1", 101,
                                                  occurred_at=ms, properties={"email": "a@b"})])

Serves the global journal (`/webhooks-journal/journal/2026-03/...`, every entry) and the local
one (`/webhooks-journal/journal-local/2026-03/...?installPortalId=N`, the entries appended for
portal N): `earliest`, `latest`, `offset/{offset}/next`, `batch/earliest/{count}`,
`batch/latest/{count}`, `batch/{offset}/next/{count}` (count capped at 100) and POST
`batch/read` (at most 100 offsets; 207 with `errors` and `numErrors` when some are unknown).
An entry is `{url, expiresAt, currentOffset}`; every time one is read it gets a fresh file URL,
served by this fake under `/journal-files/{token}` without authentication (HubSpot's files live
on a storage host) and answering 403 once `url_ttl` seconds have passed, as S3 does. `next`
after an expired (`expire_before`) or unknown offset answers 404 with HubSpot's error body;
`latest` and `earliest` on an empty journal answer 404. Every journal call needs a live
client-credentials token with `developer.webhooks_journal.read` (401 without one, 403 without
the scope). Files hold `{"offset", "journalEvents"}` in the shape service.journal_format assumes,
gzip-compressed unless `gzip` is turned off.

What HubSpot does not document, the fake decides: the batch endpoints answer 200 with no results
at the end of the journal (or an empty one); the single `offset/{offset}/next` answers 204 when
no entry follows yet.
"""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from tests.fake_hubspot import FakeHubSpot

GLOBAL_PATH = "/webhooks-journal/journal/2026-03"
LOCAL_PATH = "/webhooks-journal/journal-local/2026-03"
FILES_PATH = "/journal-files"
READ_SCOPE = "developer.webhooks_journal.read"
BATCH_MAX = 100
# The `type` of a journal event for each action (the journal subscription types).
_EVENT_TYPES = {
    "ASSOCIATION_ADDED": "ASSOCIATION",
    "ASSOCIATION_REMOVED": "ASSOCIATION",
    "GDPR_DELETE": "GDPR_PRIVACY_DELETION",
    "APP_INSTALL": "APP_LIFECYCLE_EVENT",
    "APP_UNINSTALL": "APP_LIFECYCLE_EVENT",
    "ADDED_TO_LIST": "LIST_MEMBERSHIP",
    "REMOVED_FROM_LIST": "LIST_MEMBERSHIP",
}
_S3_EXPIRED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    "<Message>Request has expired</Message></Error>"
)


@dataclass(slots=True)
class JournalEntry:
    """One entry: the events of one portal, and the file that holds them."""

    offset: str
    portal_id: int
    events: list[dict[str, Any]]
    file: bytes
    garbage_downloads: int | None = 0  # how many downloads get garbage (None: all of them)


@dataclass(slots=True)
class _Url:
    offset: str
    expires_at: float


@dataclass(slots=True)
class _State:
    entries: list[JournalEntry] = field(default_factory=list)
    expired: set[str] = field(default_factory=set)
    urls: dict[str, _Url] = field(default_factory=dict)
    downloads: int = 0


class FakeJournal:
    """The Webhooks Journal of FakeHubSpot (`fake.journal`); thread-safe."""

    def __init__(self, hub: FakeHubSpot, *, url_ttl: float = 300.0) -> None:
        self._hub = hub
        self.url_ttl = url_ttl
        self.gzip = True
        self._lock = threading.Lock()
        self._state = _State()

    # --- building the journal ------------------------------------------------------------------

    @staticmethod
    def event(
        action: str,
        portal_id: int,
        object_type_id: str | None,
        object_id: int | None,
        *,
        occurred_at: int | datetime,
        properties: dict[str, Any] | None = None,
        associated: tuple[str, int] | None = None,
        association_type_id: int | None = None,
        association_category: str | None = "HUBSPOT_DEFINED",
        primary_id: int | None = None,
        merged_ids: Sequence[int] | None = None,
        new_id: int | None = None,
        change_source: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A journal event as the file holds it: `properties` become `propertyChanges`,
        `associated` is the other side (object type id, id) of an ASSOCIATION_* event."""
        occurred = (
            occurred_at if isinstance(occurred_at, int) else round(occurred_at.timestamp() * 1000)
        )
        event: dict[str, Any] = {
            "type": _EVENT_TYPES.get(action, "OBJECT"),
            "portalId": portal_id,
            "occurredAt": occurred,
            "action": action,
        }
        if object_type_id is not None:
            event["objectTypeId"] = object_type_id
        if object_id is not None:
            event["objectId"] = object_id
        if properties is not None:
            event["propertyChanges"] = [
                {"propertyName": name, "newValue": value} for name, value in properties.items()
            ]
        if associated is not None:
            event["associatedObjectTypeId"], event["associatedObjectId"] = associated
            event["associationTypeId"] = association_type_id
            if association_category is not None:
                event["associationCategory"] = association_category
        if action == "MERGE":
            event["primaryObjectId"] = primary_id if primary_id is not None else object_id
            event["mergedObjectIds"] = list(merged_ids or [])
            event["newObjectId"] = new_id if new_id is not None else event["primaryObjectId"]
        if change_source is not None:
            event["changeSource"] = change_source
        event["publishedAt"] = occurred + 5
        return event | extra

    def append(self, portal_id: int, events: list[dict[str, Any]]) -> str:
        """Write one entry holding `events` (of `portal_id`); its offset, a UUID."""
        offset = str(uuid.uuid4())
        document = json.dumps({"offset": offset, "journalEvents": events}).encode()
        data = gzip.compress(document, mtime=0) if self.gzip else document
        with self._lock:
            self._state.entries.append(JournalEntry(offset, portal_id, list(events), data))
        return offset

    def expire_before(self, offset: str) -> None:
        """The entries up to and including `offset` are gone, as after HubSpot's 3 days."""
        with self._lock:
            offsets = [entry.offset for entry in self._state.entries]
            self._state.expired.update(offsets[: offsets.index(offset) + 1])

    def break_next_file(self, offset: str, *, times: int | None = None) -> None:
        """The entry's file downloads as garbage: the next `times` downloads (None: all)."""
        with self._lock:
            self._entry(offset).garbage_downloads = times

    @property
    def entries(self) -> list[JournalEntry]:
        """The entries not expired, oldest first."""
        with self._lock:
            return [e for e in self._state.entries if e.offset not in self._state.expired]

    @property
    def offsets(self) -> list[str]:
        """The offsets of the entries not expired, oldest first."""
        return [entry.offset for entry in self.entries]

    @property
    def downloads(self) -> int:
        """How many files were served (garbage ones included; 403s not)."""
        with self._lock:
            return self._state.downloads

    # --- HTTP ------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The journal's routes, global and local, and the file URLs'."""
        routes = [Route(FILES_PATH + "/{token}", self._file, methods=["GET"])]
        for base in (GLOBAL_PATH, LOCAL_PATH):
            routes += [
                Route(base + "/earliest", self._single(lambda es, _: es[:1]), methods=["GET"]),
                Route(base + "/latest", self._single(lambda es, _: es[-1:]), methods=["GET"]),
                Route(base + "/offset/{offset}/next", self._next, methods=["GET"]),
                Route(base + "/batch/earliest/{count}", self._batch(_first), methods=["GET"]),
                Route(base + "/batch/latest/{count}", self._batch(_last), methods=["GET"]),
                Route(base + "/batch/{offset}/next/{count}", self._batch_next, methods=["GET"]),
                Route(base + "/batch/read", self._batch_read, methods=["POST"]),
            ]
        return routes

    def _single(
        self, pick: Callable[[list[JournalEntry], int], list[JournalEntry]]
    ) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            visible = self._visible(request)
            if isinstance(visible, Response):
                return visible
            picked = pick(visible, 1)
            if not picked:
                return _error(404, "The journal has no entries.", "OBJECT_NOT_FOUND")
            return JSONResponse(self._render(picked[0]))

        return handler

    def _batch(
        self, pick: Callable[[list[JournalEntry], int], list[JournalEntry]]
    ) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            visible = self._visible(request)
            if isinstance(visible, Response):
                return visible
            count = _count(request)
            if count is None:
                return _error(400, "count must be a positive integer", "VALIDATION_ERROR")
            return _batch_response([self._render(e) for e in pick(visible, count)])

        return handler

    async def _next(self, request: Request) -> Response:
        visible = self._visible(request)
        if isinstance(visible, Response):
            return visible
        following = self._after(visible, request.path_params["offset"], 1)
        if isinstance(following, Response):
            return following
        if not following:
            return Response(status_code=204)
        return JSONResponse(self._render(following[0]))

    async def _batch_next(self, request: Request) -> Response:
        visible = self._visible(request)
        if isinstance(visible, Response):
            return visible
        count = _count(request)
        if count is None:
            return _error(400, "count must be a positive integer", "VALIDATION_ERROR")
        following = self._after(visible, request.path_params["offset"], count)
        if isinstance(following, Response):
            return following
        return _batch_response([self._render(e) for e in following])

    async def _batch_read(self, request: Request) -> Response:
        visible = self._visible(request)
        if isinstance(visible, Response):
            return visible
        try:
            inputs = json.loads(await request.body())["inputs"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "Invalid input JSON: inputs is required", "VALIDATION_ERROR")
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return _error(400, "inputs must be an array of offsets", "VALIDATION_ERROR")
        if len(inputs) > BATCH_MAX:
            return _error(400, f"at most {BATCH_MAX} inputs per batch", "VALIDATION_ERROR")
        by_offset = {entry.offset: entry for entry in visible}
        found = [self._render(by_offset[o]) for o in inputs if o in by_offset]
        missing = [o for o in inputs if o not in by_offset]
        if not missing:
            return _batch_response(found)
        errors = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": f"Could not find journal entry {o}",
                "context": {"offset": [o]},
                "errors": [],
                "links": {},
            }
            for o in missing
        ]
        return _batch_response(found, status=207, errors=errors)

    async def _file(self, request: Request) -> Response:
        now = time.time()
        with self._lock:
            url = self._state.urls.get(request.path_params["token"])
            if url is None or url.expires_at <= now:
                return Response(_S3_EXPIRED, status_code=403, media_type="application/xml")
            entry = self._entry(url.offset)
            self._state.downloads += 1
            data = entry.file
            if entry.garbage_downloads is None or entry.garbage_downloads > 0:
                data = b"\x1f\x8b not a journal file"
                if entry.garbage_downloads is not None:
                    entry.garbage_downloads -= 1
        return Response(data, media_type="application/octet-stream")

    # --- internals ---------------------------------------------------------------------------

    def _visible(self, request: Request) -> list[JournalEntry] | Response:
        """The entries this caller sees (local: those of installPortalId), or the error."""
        scopes = self._hub.app_token_scopes(request)
        if scopes is None:
            return _error(401, "Authentication credentials not found.", "INVALID_AUTHENTICATION")
        if READ_SCOPE not in scopes:
            return _error(403, f"This app hasn't been granted {READ_SCOPE}.", "MISSING_SCOPES")
        entries = self.entries
        if request.url.path.startswith(LOCAL_PATH):
            portal = request.query_params.get("installPortalId", "")
            if not portal.isdigit():
                return _error(400, "installPortalId is required", "VALIDATION_ERROR")
            entries = [e for e in entries if e.portal_id == int(portal)]
        return entries

    def _after(
        self, visible: list[JournalEntry], offset: str, count: int
    ) -> list[JournalEntry] | Response:
        for position, entry in enumerate(visible):
            if entry.offset == offset:
                return visible[position + 1 : position + 1 + count]
        return _error(404, f"Offset {offset} not found or expired.", "OBJECT_NOT_FOUND")

    def _render(self, entry: JournalEntry) -> dict[str, Any]:
        """The entry as HubSpot answers it, with a fresh file URL."""
        token = secrets.token_urlsafe(24)
        expires_at = time.time() + self.url_ttl
        with self._lock:
            self._state.urls[token] = _Url(entry.offset, expires_at)
        signature = secrets.token_hex(16)
        return {
            "url": f"{self._hub.url}{FILES_PATH}/{token}?X-Amz-Signature={signature}",
            "expiresAt": _iso(expires_at),
            "currentOffset": entry.offset,
        }

    def _entry(self, offset: str) -> JournalEntry:
        for entry in self._state.entries:
            if entry.offset == offset:
                return entry
        raise KeyError(offset)


def _first(entries: list[JournalEntry], count: int) -> list[JournalEntry]:
    return entries[:count]


def _last(entries: list[JournalEntry], count: int) -> list[JournalEntry]:
    return entries[-count:]


def _count(request: Request) -> int | None:
    """The path's count, capped at BATCH_MAX; None when it is not a positive integer."""
    text = request.path_params["count"]
    if not text.isdigit() or int(text) < 1:
        return None
    return min(int(text), BATCH_MAX)


def _iso(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _batch_response(
    results: list[dict[str, Any]], *, status: int = 200, errors: list[dict[str, Any]] | None = None
) -> JSONResponse:
    now = _iso(time.time())
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "startedAt": now,
        "completedAt": now,
    }
    if errors:
        body |= {"errors": errors, "numErrors": len(errors)}
    return JSONResponse(body, status_code=status)


def _error(status: int, message: str, category: str) -> JSONResponse:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return JSONResponse(body, status_code=status)
