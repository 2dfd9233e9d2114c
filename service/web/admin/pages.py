"""/admin pages: server-rendered HTML for a logged-in operator (Jinja2, autoescaped).

Each page reads real rows (the same queries and owners' listings as the API) and renders one
template; lists filter by query parameters and page by a `before` (or `after`) cursor. Without
a valid session a page redirects to the login form. The changes the pages offer (replay, retry)
are POST forms in forms.py, each carrying the session's CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import jinja2
from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from service import db, fetches, inbox, outbox
from service.models import INBOX_STATUSES
from service.web.admin import auth, queries
from service.web.admin import journal as journal_view
from service.web.admin.api import event_detail
from service.web.admin.database import read
from service.web.admin.params import (
    PAGE_SIZE,
    BadParameter,
    before_id,
    event_filters,
    fetch_cursor,
    fetch_filters,
    fetch_key,
    run_filters,
)
from service.web.admin.present import masked, masked_properties, pretty
from service.web.admin.rulebook import loaded_rules

Page = Callable[[Request, auth.Session], Awaitable[Response]]
NOTICES = {
    "replayed": "Re-queued: a worker picks it up within moments.",
    "replayed_many": "Re-queued every matching item: the workers pick them up within moments.",
    "retried": "Re-queued the fetch: the hydrate stage fetches it within moments.",
    "nothing": "Nothing matched, so nothing was re-queued.",
    "paused": "Paused: its events are still stored; nothing is applied, run or fetched for it"
    " until it resumes.",
    "resumed": "Resumed: the workers apply its waiting events within moments.",
    "not_paused": "That portal was not paused.",
}

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
    )
)


def render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> Response:
    """A template filled with `context`, the session's CSRF token and the page's notice."""
    notice = NOTICES.get(request.query_params.get("notice", ""))
    nav = getattr(request.state, "journal_nav", False)
    context = {"session": None, "error": None, "notice": notice, "journal_nav": nav, **context}
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline';"
        " img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"
    )
    return response


def _page(view: Page) -> Callable[[Request], Awaitable[Response]]:
    """Only for a logged-in browser (else to the login form); a BadParameter is shown, 400."""

    async def checked(request: Request) -> Response:
        token = auth.admin_token(request)
        current = None if token is None else auth.session(request, token)
        if current is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/admin/login?" + urlencode({"next": target}), status_code=303)
        request.state.journal_nav = await _journal_nav(request)
        try:
            return await view(request, current)
        except BadParameter as exc:
            return render(
                request, "error.html", {"session": current, "error": str(exc)}, status_code=400
            )

    return checked


async def _journal_nav(request: Request) -> bool:
    """Whether the nav links the Journal page: the journal is a source, or a reader left rows
    (push-only deployments see no new link)."""
    if request.app.state.config.settings.event_source != "push":
        return True
    return await read(request, journal_view.in_use)


def ack_latency(request: Request) -> dict[str, float] | None:
    """This web process's webhook answer times since it started (service/web/metrics.py):
    count, mean and the bucket bounds under which half and 99 % of them fell."""
    histogram: Histogram = request.app.state.webhook_metrics.ack
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    if not count:
        return None

    def under(share: float) -> float:
        return next((le for le, n in sorted(buckets) if n >= share * count), float("inf"))

    return {"count": count, "mean": total / count, "p50": under(0.5), "p99": under(0.99)}


def chart(series: list[int]) -> dict[str, Any]:
    """The events-per-minute bars of the overview's SVG, scaled to the busiest minute."""
    top = max(series) or 1
    bars = [
        {"x": i * 10, "height": round(80 * n / top, 1), "count": n, "ago": len(series) - i}
        for i, n in enumerate(series)
    ]
    return {"bars": bars, "top": max(series)}


@_page
async def overview(request: Request, session: auth.Session) -> Response:
    """GET /admin/: queues, events per minute, ack latency, dead letters, workers, portals."""
    stats = await read(request, queries.overview)
    context = {"stats": stats, "chart": chart(stats["events_per_minute"])}
    return render(
        request, "overview.html", {"session": session, "ack": ack_latency(request), **context}
    )


T = TypeVar("T")


def _one_page(rows: list[T], cursor: Callable[[T], str]) -> tuple[list[T], str | None]:
    """A page of `rows` (read PAGE_SIZE + 1 to know whether more follow), and the cursor of its
    last row when they do: what `_next_link` continues from."""
    if len(rows) <= PAGE_SIZE:
        return rows, None
    page = rows[:PAGE_SIZE]
    return page, cursor(page[-1])


def _next_link(request: Request, name: str, value: str | None) -> str | None:
    if value is None:
        return None
    query = {
        k: v for k, v in request.query_params.items() if k not in ("before", "after", "notice")
    }
    return f"{request.url.path}?{urlencode({**query, name: value})}"


@_page
async def events(request: Request, session: auth.Session) -> Response:
    """GET /admin/events: filter by status, type, portal, object, time; newest first."""
    query = request.query_params
    filters = event_filters(query, now=db.utcnow())
    cursor = before_id(query)
    rows = await read(
        request, lambda c: inbox.list_events(c, filters, limit=PAGE_SIZE + 1, before_id=cursor)
    )
    rows, last = _one_page(rows, lambda row: str(row.id))
    context = {
        "rows": rows,
        "query": dict(query),
        "statuses": INBOX_STATUSES,
        "filtered": filters != inbox.Filters(),
        "next": _next_link(request, "before", last),
    }
    return render(request, "events.html", {"session": session, **context})


@_page
async def event(request: Request, session: auth.Session) -> Response:
    """GET /admin/events/{id}: the raw event (emails, phones masked), error, traceback."""
    event_id: int = request.path_params["id"]
    found = await read(request, lambda c: event_detail(c, event_id))
    if found is None:
        return render(
            request,
            "error.html",
            {"session": session, "error": f"No inbox event {event_id}."},
            status_code=404,
        )
    context = {"event": found, "raw": pretty(found["payload"])}  # masked by event_detail
    return render(request, "event.html", {"session": session, **context})


@_page
async def actions(request: Request, session: auth.Session) -> Response:
    """GET /admin/actions: action runs, filter by status, rule, portal, event; newest first."""
    query = request.query_params
    filters = run_filters(query, now=db.utcnow())
    cursor = before_id(query)
    rows = await read(
        request, lambda c: outbox.list_runs(c, filters, limit=PAGE_SIZE + 1, before_id=cursor)
    )
    rows, last = _one_page(rows, lambda row: str(row.id))
    context = {
        "rows": rows,
        "query": dict(query),
        "statuses": outbox.RUN_STATUSES,
        "next": _next_link(request, "before", last),
    }
    return render(request, "actions.html", {"session": session, **context})


@_page
async def action(request: Request, session: auth.Session) -> Response:
    """GET /admin/actions/{id}: one run, its payload masked, its error."""
    run_id: int = request.path_params["id"]
    row = await read(request, lambda c: outbox.get_run(c, run_id))
    if row is None:
        return render(
            request,
            "error.html",
            {"session": session, "error": f"No action run {run_id}."},
            status_code=404,
        )
    context = {"run": row, "raw": pretty(masked(row.payload))}
    return render(request, "action.html", {"session": session, **context})


@_page
async def hydration(request: Request, session: auth.Session) -> Response:
    """GET /admin/hydration: fetch requests, filter by status, portal, object type."""
    query = request.query_params
    filters = fetch_filters(query)
    after = fetch_cursor(query)
    rows = await read(
        request, lambda c: fetches.page_requests(c, filters, after=after, limit=PAGE_SIZE + 1)
    )
    rows, last = _one_page(rows, fetch_key)
    context = {
        "rows": rows,
        "query": dict(query),
        "statuses": fetches.STATUSES,
        "next": _next_link(request, "after", last),
    }
    return render(request, "hydration.html", {"session": session, **context})


@_page
async def portals(request: Request, session: auth.Session) -> Response:
    """GET /admin/portals: token state, re-install needed, rate-limit use, API calls, events
    waiting; pause and resume."""
    found = await read(request, queries.portal_list)
    private = request.app.state.config.settings.access_token is not None
    return render(
        request, "portals.html", {"session": session, "portals": found, "private": private}
    )


@_page
async def rules(request: Request, session: auth.Session) -> Response:
    """GET /admin/rules: the loaded rules and how often each fired."""
    settings = request.app.state.config.settings
    shown, problem = loaded_rules(settings, await read(request, queries.fired))
    context = {"rules": shown, "problem": problem, "rules_file": settings.rules_file}
    return render(request, "rules.html", {"session": session, **context})


@_page
async def journal(request: Request, session: auth.Session) -> Response:
    """GET /admin/journal: the Webhooks Journal reader: offset, entries behind, last entry's
    age, failed entries and gaps (open ones first), filter entries by status."""
    status, name = journal_view.entry_filters(request.query_params)
    found = await read(
        request, lambda c: journal_view.view(c, status=status, journal=name, limit=PAGE_SIZE)
    )
    context = {
        "journal": found,
        "source": request.app.state.config.settings.event_source,
        "query": dict(request.query_params),
        "statuses": journal_view.ENTRY_STATUSES,
    }
    return render(request, "journal.html", {"session": session, **context})


@_page
async def record(request: Request, session: auth.Session) -> Response:
    """GET /admin/records/{portal}/{object_type}/{id}: a mirrored record, values masked."""
    p = request.path_params
    found = await read(request, lambda c: queries.record(c, p["portal"], p["object_type"], p["id"]))
    if found is None:
        return render(
            request,
            "error.html",
            {"session": session, "error": "The mirror holds no such record."},
            status_code=404,
        )
    found["properties"] = masked_properties(found["properties"])
    return render(request, "record.html", {"session": session, "record": found})


routes = [
    Route("/", overview, methods=["GET"]),
    Route("/events", events, methods=["GET"]),
    Route("/events/{id:int}", event, methods=["GET"]),
    Route("/actions", actions, methods=["GET"]),
    Route("/actions/{id:int}", action, methods=["GET"]),
    Route("/hydration", hydration, methods=["GET"]),
    Route("/portals", portals, methods=["GET"]),
    Route("/rules", rules, methods=["GET"]),
    Route("/journal", journal, methods=["GET"]),
    Route("/records/{portal:int}/{object_type:str}/{id:int}", record, methods=["GET"]),
]
