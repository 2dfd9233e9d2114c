"""/admin/api/...: the admin JSON API, for `Authorization: Bearer $ADMIN_TOKEN` only.

Reads query the tables (lists are newest first, paged by a `next` cursor: pass it back as
`?before=` or, for hydration, `?after=`); every change goes through the table's owner:
`inbox.replay`, `outbox.replay`, `fetches.retry`, `portals.pause` and `portals.resume`. A bad
parameter is 400 naming it; a missing or wrong token is 401; with ADMIN_TOKEN unset the whole
/admin tree is 404 (see the package). `/journal` (the Webhooks Journal reader, journal.py) shows
the newest `limit` entries, unpaged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import db, fetches, inbox, outbox, portals
from service.web.admin import auth, queries
from service.web.admin import journal as journal_view
from service.web.admin.database import read, write
from service.web.admin.params import (
    PAGE_SIZE,
    BadParameter,
    before_id,
    event_filters,
    fetch_cursor,
    fetch_filters,
    fetch_key,
    is_unfiltered,
    portal_id,
    run_filters,
)
from service.web.admin.present import jsonable, masked, masked_properties
from service.web.admin.rulebook import loaded_rules

Endpoint = Callable[[Request], Awaitable[Response]]
MAX_LIMIT = 500


def _error(status: int, error: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _api(endpoint: Endpoint) -> Endpoint:
    """Only for the bearer of ADMIN_TOKEN; a BadParameter becomes 400."""

    async def checked(request: Request) -> Response:
        token = auth.admin_token(request)
        if token is None:
            return _error(404, "not_found", "the admin API is off: ADMIN_TOKEN is not set")
        if not auth.bearer_matches(request, token):
            return _error(
                401,
                "unauthorized",
                "send Authorization: Bearer $ADMIN_TOKEN",
                **{"WWW-Authenticate": "Bearer"},
            )
        try:
            return await endpoint(request)
        except BadParameter as exc:
            return _error(400, "bad_parameter", str(exc))

    return checked


def _limit(query: Mapping[str, str]) -> int:
    value = query.get("limit", "")
    if not value:
        return PAGE_SIZE
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadParameter(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def _page(rows: list[Any], limit: int, cursor: Callable[[Any], str]) -> dict[str, Any]:
    """One page (`limit` rows of the `limit + 1` read) and the cursor of the next, if any."""
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": jsonable(rows), "next": cursor(rows[-1]) if more and rows else None}


async def _body(request: Request) -> dict[str, str]:
    """A JSON object body as query-like strings ({} when empty); `all` stays a flag."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadParameter("the body must be a JSON object of filters") from None
    if not isinstance(data, dict):
        raise BadParameter("the body must be a JSON object of filters")
    return {str(k): ("1" if v is True else str(v)) for k, v in data.items() if v not in (None, "")}


def _split_error(last_error: str | None) -> dict[str, str | None]:
    """The error's first line, and the traceback the worker wrote under it."""
    if not last_error:
        return {"error": None, "traceback": None}
    first, _, rest = last_error.partition("\n")
    return {"error": first, "traceback": rest.strip() or None}


@_api
async def overview(request: Request) -> Response:
    """GET /admin/api/overview."""
    return JSONResponse(await read(request, queries.overview))


@_api
async def list_events(request: Request) -> Response:
    """GET /admin/api/events: ?status= &type= &portal= &object= &since= &until= &before= &limit="""
    filters = event_filters(request.query_params, now=db.utcnow())
    limit, cursor = _limit(request.query_params), before_id(request.query_params)
    rows = await read(
        request, lambda c: inbox.list_events(c, filters, limit=limit + 1, before_id=cursor)
    )
    return JSONResponse(_page(rows, limit, lambda row: str(row.id)))


def event_detail(connection: Any, event_id: int) -> dict[str, Any] | None:
    """One inbox row in full: payload (emails and phone numbers masked), attempts, error and
    traceback, and its action runs."""
    row = inbox.get_event(connection, event_id)
    if row is None:
        return None
    found: dict[str, Any] = jsonable(row)
    found["payload"] = masked(found["payload"])
    found |= _split_error(row.last_error)
    runs = outbox.list_runs(connection, outbox.RunFilters(inbox_id=event_id), limit=100)
    found["action_runs"] = jsonable(runs)
    return found


@_api
async def show_event(request: Request) -> Response:
    """GET /admin/api/events/{id}."""
    event_id: int = request.path_params["id"]
    found = await read(request, lambda c: event_detail(c, event_id))
    if found is None:
        return _error(404, "not_found", f"no inbox event with id {event_id}")
    return JSONResponse(found)


@_api
async def replay_event(request: Request) -> Response:
    """POST /admin/api/events/{id}/replay: re-queue it (whatever its status)."""
    filters = inbox.Filters(ids=(request.path_params["id"],))
    count = await write(request, lambda c: inbox.replay(c, filters))
    if not count:
        return _error(404, "not_found", f"no inbox event with id {request.path_params['id']}")
    return JSONResponse({"replayed": count})


@_api
async def replay_events(request: Request) -> Response:
    """POST /admin/api/events/replay: re-queue the events matching the body's filters
    ({"status": "dead", ...}); no filter at all needs {"all": true}."""
    body = await _body(request)
    filters = event_filters(body, now=db.utcnow())
    if is_unfiltered(filters) and body.get("all") != "1":
        raise BadParameter('say which events (status, type, portal, object, since, until) or "all"')
    return JSONResponse({"replayed": await write(request, lambda c: inbox.replay(c, filters))})


@_api
async def list_actions(request: Request) -> Response:
    """GET /admin/api/actions: ?status= &rule= &portal= &event= &since= &before= &limit="""
    filters = run_filters(request.query_params, now=db.utcnow())
    limit, cursor = _limit(request.query_params), before_id(request.query_params)
    rows = await read(
        request, lambda c: outbox.list_runs(c, filters, limit=limit + 1, before_id=cursor)
    )
    return JSONResponse(_page(rows, limit, lambda row: str(row.id)))


@_api
async def show_action(request: Request) -> Response:
    """GET /admin/api/actions/{id}: the run in full (payload masked, error, result)."""
    run_id: int = request.path_params["id"]
    row = await read(request, lambda c: outbox.get_run(c, run_id))
    if row is None:
        return _error(404, "not_found", f"no action run with id {run_id}")
    found: dict[str, Any] = jsonable(row) | _split_error(row.last_error)
    found["payload"] = masked(found["payload"])
    return JSONResponse(found)


@_api
async def replay_action(request: Request) -> Response:
    """POST /admin/api/actions/{id}/replay: run it again."""
    filters = outbox.RunFilters(ids=(request.path_params["id"],))
    return JSONResponse({"replayed": await write(request, lambda c: outbox.replay(c, filters))})


@_api
async def replay_actions(request: Request) -> Response:
    """POST /admin/api/actions/replay: run matching runs again; no filter needs "all"."""
    body = await _body(request)
    filters = run_filters(body, now=db.utcnow())
    if is_unfiltered(filters) and body.get("all") != "1":
        raise BadParameter('say which runs (status, rule, portal, event, since) or "all"')
    return JSONResponse({"replayed": await write(request, lambda c: outbox.replay(c, filters))})


@_api
async def list_hydration(request: Request) -> Response:
    """GET /admin/api/hydration: ?status= &portal= &object_type= &object= &after= &limit="""
    filters = fetch_filters(request.query_params)
    limit, after = _limit(request.query_params), fetch_cursor(request.query_params)
    rows = await read(
        request, lambda c: fetches.page_requests(c, filters, after=after, limit=limit + 1)
    )
    return JSONResponse(_page(rows, limit, fetch_key))


@_api
async def retry_fetch(request: Request) -> Response:
    """POST /admin/api/hydration/{portal}/{object_type}/{object_id}/retry."""
    params = request.path_params
    filters = fetches.Filters(
        portal_id=params["portal"], object_type=params["object_type"], object_id=params["object"]
    )
    return JSONResponse({"retried": await write(request, lambda c: fetches.retry(c, filters))})


@_api
async def retry_fetches(request: Request) -> Response:
    """POST /admin/api/hydration/retry: re-queue matching requests; no filter needs "all"."""
    body = await _body(request)
    filters = fetch_filters(body)
    if is_unfiltered(filters) and body.get("all") != "1":
        raise BadParameter('say which requests (status, portal, object_type, object) or "all"')
    return JSONResponse({"retried": await write(request, lambda c: fetches.retry(c, filters))})


@_api
async def list_portals(request: Request) -> Response:
    """GET /admin/api/portals: token state, re-install needed, rate-limit use, API calls,
    events waiting, paused or not."""
    return JSONResponse({"items": await read(request, queries.portal_list)})


def resume_portal(connection: Any, portal: int) -> bool:
    """Resume the portal and wake the apply, act and hydrate stages; False when it was not
    paused."""
    resumed = portals.resume(connection, portal)
    if resumed:
        inbox.wake(connection)
        outbox.wake(connection)
        fetches.wake(connection)
    return resumed


@_api
async def pause_portal(request: Request) -> Response:
    """POST /admin/api/portals/{portal}/pause, {"reason": "..."} optional: its events are still
    stored and acknowledged, but nothing is applied, run or fetched for it until it resumes."""
    portal = portal_id(request.path_params["portal"])
    reason = (await _body(request)).get("reason")
    control = await write(request, lambda c: portals.pause(c, portal, reason))
    return JSONResponse(
        {
            "portal_id": portal,
            "paused": True,
            "paused_at": jsonable(control.paused_at),
            "reason": control.reason,
        }
    )


@_api
async def resume_portal_now(request: Request) -> Response:
    """POST /admin/api/portals/{portal}/resume: its waiting events are applied at once."""
    portal = portal_id(request.path_params["portal"])
    resumed = await write(request, lambda c: resume_portal(c, portal))
    return JSONResponse({"portal_id": portal, "paused": False, "resumed": resumed})


@_api
async def show_record(request: Request) -> Response:
    """GET /admin/api/records/{portal}/{object_type}/{object_id}: the mirrored record (values
    masked)."""
    p = request.path_params
    found = await read(request, lambda c: queries.record(c, p["portal"], p["object_type"], p["id"]))
    if found is None:
        return _error(404, "not_found", "the mirror holds no such record")
    found["properties"] = masked_properties(found["properties"])
    return JSONResponse(found)


@_api
async def list_rules(request: Request) -> Response:
    """GET /admin/api/rules: the loaded rules and how often each fired (its action runs)."""
    fired = await read(request, queries.fired)
    rules, problem = loaded_rules(request.app.state.config.settings, fired)
    return JSONResponse({"items": rules, "problem": problem})


@_api
async def show_journal(request: Request) -> Response:
    """GET /admin/api/journal: ?status=stored|failed &journal= &limit= -- the Webhooks Journal
    reader: each cursor with its state, the newest entries (counts and errors, never a file's
    contents), the open gaps and the latest others."""
    status, journal = journal_view.entry_filters(request.query_params)
    limit = _limit(request.query_params)
    found = await read(
        request, lambda c: journal_view.view(c, status=status, journal=journal, limit=limit)
    )
    source = request.app.state.config.settings.event_source
    return JSONResponse({"event_source": source, **found})


RECORD = "/records/{portal:int}/{object_type:str}/{id:int}"
FETCH = "/hydration/{portal:int}/{object_type:str}/{object:int}"

routes = [
    Route("/overview", overview, methods=["GET"]),
    Route("/events", list_events, methods=["GET"]),
    Route("/events/replay", replay_events, methods=["POST"]),
    Route("/events/{id:int}", show_event, methods=["GET"]),
    Route("/events/{id:int}/replay", replay_event, methods=["POST"]),
    Route("/actions", list_actions, methods=["GET"]),
    Route("/actions/replay", replay_actions, methods=["POST"]),
    Route("/actions/{id:int}", show_action, methods=["GET"]),
    Route("/actions/{id:int}/replay", replay_action, methods=["POST"]),
    Route("/hydration", list_hydration, methods=["GET"]),
    Route("/hydration/retry", retry_fetches, methods=["POST"]),
    Route(FETCH + "/retry", retry_fetch, methods=["POST"]),
    Route("/portals", list_portals, methods=["GET"]),
    Route("/portals/{portal:int}/pause", pause_portal, methods=["POST"]),
    Route("/portals/{portal:int}/resume", resume_portal_now, methods=["POST"]),
    Route(RECORD, show_record, methods=["GET"]),
    Route("/rules", list_rules, methods=["GET"]),
    Route("/journal", show_journal, methods=["GET"]),
]
