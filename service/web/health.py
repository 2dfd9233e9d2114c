"""GET /healthz and GET /readyz: whether the process is up, and whether it can take webhooks.

It owns the two probes and their answers: /healthz never touches the database; /readyz answers
503 with a reason until the database answers and its schema is at this code's migration head or
newer, and lists the portals whose OAuth tokens need a re-install (service.hubspot.oauth) without
becoming unready for them.

Newer is what a rolling deploy looks like: the new release migrates before it starts, while the
old instances still serve. Migrations are expand-then-contract (README, "Migrations"), so the old
code works on the newer schema and must stay in the load balancer. A revision id this code's
migration scripts do not know counts as newer: revisions are only ever added, never renamed or
removed, so the only way to meet an unknown one is a release that came after this one. A known
revision other than the head is behind (the history is linear, so it is an ancestor of the
head): this code may need tables it does not have yet, so the instance is not ready.
"""

from __future__ import annotations

import functools
import logging

import psycopg
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import db
from service.hubspot.oauth import portals_needing_reinstall
from service.web.webhook import STORAGE_ERRORS

log = logging.getLogger(__name__)


async def healthz(request: Request) -> Response:
    """GET /healthz: the process is up; no database call."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """GET /readyz: the database answers and its schema is at the migration head or newer."""
    head = request.app.state.config.head
    try:
        async with request.app.state.pool.connection() as connection:
            cursor = await connection.execute("SELECT version_num FROM alembic_version")
            row = await cursor.fetchone()
    except psycopg.errors.UndefinedTable:
        return _not_ready("schema_not_migrated", f"no schema; run migrate (head is {head})")
    except STORAGE_ERRORS as exc:
        return _not_ready("database_unreachable", type(exc).__name__)
    current = row[0] if row is not None else None
    if current is None:
        return _not_ready(
            "schema_not_migrated", f"no revision recorded; run migrate (head is {head})"
        )
    note = None
    if current != head:
        if current in _known_revisions():
            return _not_ready("schema_behind", f"schema at {current}, this code's head is {head}")
        note = (
            f"schema at {current}, newer than this code's head {head}: a newer release has"
            " migrated; this instance serves until it is replaced"
        )
    # A portal whose OAuth tokens stopped working does not make the service unready (the
    # others go on), but it is reported here as well as in the logs.
    try:
        reinstall = await run_in_threadpool(portals_needing_reinstall, request.app.state.engine)
    except sa.exc.SQLAlchemyError as exc:
        return _not_ready("database_unreachable", type(exc).__name__)
    body: dict[str, object] = {"status": "ready", "schema": current}
    if note is not None:
        body["note"] = note
    if reinstall:
        body["portals_needing_reinstall"] = reinstall
    return JSONResponse(body)


def _not_ready(reason: str, detail: str) -> JSONResponse:
    log.warning("not_ready", extra={"reason": reason})
    return JSONResponse(
        {"status": "unavailable", "reason": reason, "detail": detail}, status_code=503
    )


@functools.cache
def _known_revisions() -> frozenset[str]:
    """The revision ids of this code's migration scripts (read once; they never change)."""
    return frozenset(db.migration_history())
