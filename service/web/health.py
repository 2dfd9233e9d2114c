"""GET /healthz and GET /readyz: whether the process is up, and whether it can take webhooks.

It owns the two probes and their answers: /healthz never touches the database; /readyz answers
503 with a reason until the database answers and its schema is at the migration head, and lists
the portals whose OAuth tokens need a re-install (service.hubspot.oauth) without becoming unready
for them.
"""

from __future__ import annotations

import logging

import psycopg
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.hubspot.oauth import portals_needing_reinstall
from service.web.webhook import STORAGE_ERRORS

log = logging.getLogger(__name__)


async def healthz(request: Request) -> Response:
    """GET /healthz: the process is up; no database call."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """GET /readyz: the database answers and its schema is at the migration head."""
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
    if current != head:
        return _not_ready("schema_not_migrated", f"schema at {current}, head is {head}")
    # A portal whose OAuth tokens stopped working does not make the service unready (the
    # others go on), but it is reported here as well as in the logs.
    try:
        reinstall = await run_in_threadpool(portals_needing_reinstall, request.app.state.engine)
    except sa.exc.SQLAlchemyError as exc:
        return _not_ready("database_unreachable", type(exc).__name__)
    body: dict[str, object] = {"status": "ready", "schema": current}
    if reinstall:
        body["portals_needing_reinstall"] = reinstall
    return JSONResponse(body)


def _not_ready(reason: str, detail: str) -> JSONResponse:
    log.warning("not_ready", extra={"reason": reason})
    return JSONResponse(
        {"status": "unavailable", "reason": reason, "detail": detail}, status_code=503
    )
