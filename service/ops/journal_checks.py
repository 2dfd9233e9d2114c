"""`doctor`'s Webhooks Journal checks, when HUBSPOT_EVENT_SOURCE is journal or both.

Three lines, in order: `journal token` (the app's client credentials give a client-credentials
token: service/hubspot/appauth.py, the token the reader uses, with the journal scopes asked
for), `journal` (the journal the reader reads answers `latest` to that token; HubSpot refuses a
token without `developer.webhooks_journal.read` with 403, which is how a missing scope shows)
and `journal reader` (from the reader's rows: where its cursor is and how old its last entry,
how far behind the journal's latest it was at its last look, failed entries, open gaps, and
whether its last round failed). With HUBSPOT_EVENT_SOURCE=push there is no line at all.
"""

from __future__ import annotations

import sqlalchemy as sa

from service import db, journal
from service.hubspot import appauth
from service.hubspot.client import HubSpotError, HubSpotUnavailable
from service.hubspot.journal_api import JournalApi
from service.ops.checks import Check
from service.settings import Settings

REPLAY = "hubspot-webhooks journal replay --failed"
_SCOPE = appauth.JOURNAL_SCOPES[0]


def checks(settings: Settings, engine: sa.Engine | None) -> list[Check]:
    """The journal's lines (none in push mode); `engine` None: the database is not usable."""
    if settings.event_source == "push":
        return []
    app = appauth.from_settings(settings)
    if app is None:  # Settings refuses journal mode without them; kept for a clear line
        fix = "set HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET (the app's Auth tab)"
        return [Check("journal token", "fail", "no client id and secret: no app token", fix)]
    api = JournalApi(app, portal_id=settings.journal_portal_id)
    token = check_app_token(app)
    answers = check_latest(api) if token.status == "ok" else _cannot("journal", "journal token")
    return [token, answers, check_reader(settings, engine, api.name)]


def _cannot(name: str, other: str) -> Check:
    return Check(name, "warn", f"cannot tell: see {other}", f"fix {other} first")


def check_app_token(app: appauth.AppApi) -> Check:
    """HubSpot gives the app a client-credentials token for the journal's scopes."""
    name = "journal token"
    try:
        app.token.get()
    except HubSpotUnavailable as exc:
        return Check(
            name, "fail", f"HubSpot did not answer: {exc}", "check HUBSPOT_API_BASE_URL and egress"
        )
    except HubSpotError as exc:
        fix = (
            "check HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET (the app's Auth tab) and that the"
            f" app's scopes include {_SCOPE}"
        )
        return Check(name, "fail", str(exc), fix)
    scopes = ", ".join(app.token.scopes)
    return Check(name, "ok", f"the client credentials give an app token (scopes asked: {scopes})")


def check_latest(api: JournalApi) -> Check:
    """The journal answers `latest` to the app's token (403: the token lacks the scope)."""
    name = "journal"
    try:
        latest = api.latest()
    except HubSpotUnavailable as exc:
        return Check(
            name, "fail", f"HubSpot did not answer: {exc}", "check HUBSPOT_API_BASE_URL and egress"
        )
    except HubSpotError as exc:
        if exc.status in (401, 403):
            detail = f"HubSpot refused the {api.name} journal to the app's token ({exc.status})"
            return Check(name, "fail", detail, f"add the {_SCOPE} scope to the app, then run again")
        return Check(name, "fail", f"{api.name} journal: {exc}", "see HubSpot's answer")
    if latest is None:
        return Check(name, "ok", f"the {api.name} journal answers latest: no entry yet")
    return Check(name, "ok", f"the {api.name} journal answers latest: offset {latest.offset}")


def check_reader(settings: Settings, engine: sa.Engine | None, name: str) -> Check:
    """The reader's state from its rows: cursor, age, behind, failed entries, gaps, errors."""
    check = "journal reader"
    if engine is None:
        return Check(check, "warn", "cannot tell: the database is not usable", "fix it first")
    with engine.connect() as connection:
        found = next((s for s in journal.status(connection) if s.cursor.journal == name), None)
    if found is None:
        fix = "start `hubspot-webhooks worker` (it reads the journal in this mode)"
        return Check(check, "warn", f"the {name} journal has not been read yet", fix)
    cursor, now = found.cursor, db.utcnow()
    age = None if cursor.entry_at is None else (now - cursor.entry_at).total_seconds()
    parts = [
        f"offset {cursor.current_offset or 'none yet'}",
        "no entry stored yet" if age is None else f"last entry stored {age:.0f} s ago",
        f"{'?' if cursor.behind is None else cursor.behind} behind latest",
        f"{found.entries_failed} failed entries",
        f"{found.open_gaps} open gaps",
        f"{cursor.errors} errors",
    ]
    detail = f"{name}: " + ", ".join(parts)
    successes = [cursor.entry_at, cursor.checked_at if cursor.behind == 0 else None]
    last_ok = max((t for t in successes if t is not None), default=None)
    if cursor.last_error_at is not None and (last_ok is None or cursor.last_error_at > last_ok):
        error = (cursor.last_error or "").partition("\n")[0][:200]
        return Check(check, "fail", f"{detail}; last round failed: {error}", "see the worker's log")
    if found.open_gaps:
        fix = "the worker reconciles the missed window; /admin/journal shows a reconcile error"
        return Check(check, "warn", detail, fix)
    if found.entries_failed:
        return Check(check, "warn", detail, f"fix the parser, then run `{REPLAY}`")
    if cursor.behind and age is not None and age > settings.alert_lag_seconds:
        return Check(check, "warn", detail, "the reader is behind: check the worker is running")
    return Check(check, "ok", detail)
