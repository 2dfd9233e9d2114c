"""/admin's forms: log in and out, and the changes an operator makes (replay, retry, pause).

Forms are posted urlencoded and read here without python-multipart. Every change needs a valid
session and the session's CSRF token (a POST without it is 403), and goes through the table's
owner (`inbox.replay`, `outbox.replay`, `fetches.retry`, `portals.pause` and `portals.resume`);
the answer redirects back (303) with a notice. Login compares the token in constant time and
never echoes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from service import db, fetches, inbox, outbox, portals
from service.web.admin import auth
from service.web.admin.api import resume_portal
from service.web.admin.database import write
from service.web.admin.pages import render
from service.web.admin.params import BadParameter, event_filters, portal_id

MAX_FORM_BYTES = 16 * 1024
Change = Callable[[Request, dict[str, str]], Awaitable[Response]]


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _back(path: str, notice: str) -> RedirectResponse:
    joiner = "&" if "?" in path else "?"
    return RedirectResponse(f"{path}{joiner}notice={notice}", status_code=303)


def _local(target: str | None) -> str:
    """Where to go after logging in: a path under /admin, never another site."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return "/admin/"


async def login_form(request: Request) -> Response:
    """GET /admin/login."""
    return render(request, "login.html", {"next": _local(request.query_params.get("next"))})


async def login(request: Request) -> Response:
    """POST /admin/login: the admin token in, a session cookie out (303 to the page asked for)."""
    token = auth.admin_token(request)
    form = await _form(request)
    target = _local(form.get("next"))
    if token is None or not auth.token_matches(form.get("token", ""), token):
        context = {"next": target, "error": "That is not the admin token (ADMIN_TOKEN)."}
        return render(request, "login.html", context, status_code=401)
    response = RedirectResponse(target, status_code=303)
    auth.set_session_cookie(response, request, auth.new_session_cookie(token))
    return response


def _change(change: Change) -> Callable[[Request], Awaitable[Response]]:
    """Only with a session and its CSRF token: else 403, and nothing changes."""

    async def checked(request: Request) -> Response:
        token = auth.admin_token(request)
        current = None if token is None else auth.session(request, token)
        form = await _form(request)
        if current is None:
            return PlainTextResponse("Forbidden: log in first (/admin/login)", status_code=403)
        if not auth.csrf_matches(current, form.get("csrf", "")):
            return PlainTextResponse(
                "Forbidden: the form's CSRF token is missing or stale; reload the page",
                status_code=403,
            )
        try:
            return await change(request, form)
        except BadParameter as exc:
            return render(
                request, "error.html", {"session": current, "error": str(exc)}, status_code=400
            )

    return checked


@_change
async def logout(request: Request, form: dict[str, str]) -> Response:
    """POST /admin/logout."""
    response = RedirectResponse("/admin/login", status_code=303)
    auth.clear_session_cookie(response, request)
    return response


@_change
async def replay_event(request: Request, form: dict[str, str]) -> Response:
    """POST /admin/events/{id}/replay."""
    event_id: int = request.path_params["id"]
    filters = inbox.Filters(ids=(event_id,))
    count = await write(request, lambda c: inbox.replay(c, filters))
    return _back(f"/admin/events/{event_id}", "replayed" if count else "nothing")


@_change
async def replay_events(request: Request, form: dict[str, str]) -> Response:
    """POST /admin/events/replay: every event matching the list's filters (one at least)."""
    filters = event_filters(form, now=db.utcnow())
    if filters == inbox.Filters():
        raise BadParameter("choose a filter first (replaying every event is for the CLI: --all)")
    count = await write(request, lambda c: inbox.replay(c, filters))
    query = {k: v for k, v in form.items() if k != "csrf" and v}
    return _back(f"/admin/events?{urlencode(query)}", "replayed_many" if count else "nothing")


@_change
async def replay_action(request: Request, form: dict[str, str]) -> Response:
    """POST /admin/actions/{id}/replay."""
    run_id: int = request.path_params["id"]
    filters = outbox.RunFilters(ids=(run_id,))
    count = await write(request, lambda c: outbox.replay(c, filters))
    return _back(f"/admin/actions/{run_id}", "replayed" if count else "nothing")


@_change
async def retry_fetch(request: Request, form: dict[str, str]) -> Response:
    """POST /admin/hydration/{portal}/{object_type}/{object}/retry."""
    p = request.path_params
    filters = fetches.Filters(
        portal_id=p["portal"], object_type=p["object_type"], object_id=p["object"]
    )
    count = await write(request, lambda c: fetches.retry(c, filters))
    return _back("/admin/hydration", "retried" if count else "nothing")


@_change
async def pause_portal(request: Request, form: dict[str, str]) -> Response:
    """POST /admin/portals/{portal}/pause, or /admin/portals/pause with a `portal` field."""
    portal = portal_id(request.path_params.get("portal", form.get("portal", "")))
    reason = form.get("reason")
    await write(request, lambda c: portals.pause(c, portal, reason))
    return _back("/admin/portals", "paused")


@_change
async def resume_portal_form(request: Request, form: dict[str, str]) -> Response:
    """POST /admin/portals/{portal}/resume: its waiting events are applied at once."""
    portal = portal_id(request.path_params["portal"])
    resumed = await write(request, lambda c: resume_portal(c, portal))
    return _back("/admin/portals", "resumed" if resumed else "not_paused")


routes = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/events/replay", replay_events, methods=["POST"]),
    Route("/events/{id:int}/replay", replay_event, methods=["POST"]),
    Route("/actions/{id:int}/replay", replay_action, methods=["POST"]),
    Route(
        "/hydration/{portal:int}/{object_type:str}/{object:int}/retry",
        retry_fetch,
        methods=["POST"],
    ),
    Route("/portals/pause", pause_portal, methods=["POST"]),
    Route("/portals/{portal:int}/pause", pause_portal, methods=["POST"]),
    Route("/portals/{portal:int}/resume", resume_portal_form, methods=["POST"]),
]
