"""The web process: routes, lifespan, thin endpoints. Business logic lives in service.inbox."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
import psycopg_pool
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import db, inbox
from service.settings import Settings
from service.signature import InvalidSignature, build_request_uri, verify_request

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "10"


class BodyTooLarge(Exception):
    """The request body exceeds MAX_BODY_BYTES."""


@dataclass(frozen=True, slots=True)
class _Config:
    """What the endpoints need, computed once at start-up."""

    settings: Settings
    secrets: tuple[str, ...]
    trusted: _TrustedProxies
    head: str


def create_app(settings: Settings | None = None, *, database_url: str | None = None) -> Starlette:
    """Build the ASGI app. `database_url` overrides settings (the embedded server's URL)."""
    settings = Settings.from_env() if settings is None else settings
    url = database_url or settings.database_url
    if url is None:
        raise ValueError("create_app needs a database URL (DATABASE_URL or the embedded server)")
    config = _Config(
        settings=settings,
        secrets=settings.require_client_secret(),
        trusted=_TrustedProxies(settings.forwarded_allow_ips),
        head=db.migration_head(),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = db.create_web_pool(url, size=settings.db_pool_size)
        # Do not wait for the database here: the process must come up (and /healthz answer)
        # while Postgres is still starting; requests meanwhile get 503 and HubSpot retries.
        await pool.open(wait=False)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = Starlette(
        routes=[
            Route("/webhooks/hubspot", receive_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
        ],
        lifespan=lifespan,
    )
    app.state.config = config
    return app


async def receive_webhook(request: Request) -> Response:
    """POST /webhooks/hubspot: size limit, signature, parse, store once, 200 only when committed."""
    config: _Config = request.app.state.config
    limit = config.settings.max_body_bytes
    started = time.perf_counter()
    try:
        body = await _read_body(request, limit)
    except BodyTooLarge:
        log.warning("webhook_rejected", extra={"reason": "body_too_large"})
        return _error(413, "body_too_large", f"body exceeds {limit} bytes")
    except ClientDisconnect:
        return Response(status_code=400)
    try:
        check = verify_request(
            headers=_headers(request),
            secrets=config.secrets,
            method=request.method,
            uri=_signed_uri(request, config.settings.webhook_public_url, config.trusted),
            body=body,
            now_ms=int(time.time() * 1000),
            tolerance_ms=config.settings.signature_tolerance_seconds * 1000,
            accept_legacy=config.settings.accept_legacy_signatures,
        )
    except InvalidSignature as exc:
        log.warning("webhook_rejected", extra={"reason": exc.reason, "detail": str(exc)})
        return _error(401, "unauthorized", exc.reason, detail=str(exc))
    try:
        batch = inbox.parse_batch(body)
    except inbox.InvalidBatch as exc:
        log.warning("webhook_rejected", extra={"reason": "invalid_body", "detail": str(exc)})
        return _error(400, "invalid_body", str(exc))
    try:
        result = await _record(request.app.state.pool, batch, check.version)
    except _STORAGE_ERRORS as exc:
        log.error(
            "webhook_not_stored",
            extra={"reason": type(exc).__name__, "events": len(batch.events)},
        )
        return _error(
            503,
            "storage_unavailable",
            "the events were not stored; retry later",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    log.info(
        "webhook_stored",
        extra={
            "received": result.received,
            "stored": result.stored,
            "duplicates": result.duplicates,
            "signature_version": check.version,
            "ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return JSONResponse(
        {"received": result.received, "stored": result.stored, "duplicates": result.duplicates}
    )


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
    except _STORAGE_ERRORS as exc:
        return _not_ready("database_unreachable", type(exc).__name__)
    current = row[0] if row is not None else None
    if current != head:
        return _not_ready("schema_not_migrated", f"schema at {current}, head is {head}")
    return JSONResponse({"status": "ready", "schema": current})


_STORAGE_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout, OSError)


async def _record(
    pool: psycopg_pool.AsyncConnectionPool, batch: inbox.Batch, version: str
) -> inbox.RecordResult:
    """Record on a pooled autocommit connection; retry once if that connection had gone stale."""
    try:
        async with pool.connection() as connection:
            return await inbox.record_delivery(connection, batch, signature_version=version)
    except psycopg.OperationalError:
        # A server restart leaves dead connections in the pool; the pool discards a broken one
        # on return. Repeating is safe: ON CONFLICT stores nothing twice.
        async with pool.connection() as connection:
            return await inbox.record_delivery(connection, batch, signature_version=version)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _TrustedProxies:
    """Peers whose X-Forwarded-* headers are believed, as uvicorn's FORWARDED_ALLOW_IPS."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.any = "*" in entries
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if e != "*"]

    def trusts(self, host: str | None) -> bool:
        if self.any:
            return True
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _signed_uri(request: Request, public_url: str | None, trusted: _TrustedProxies) -> str:
    """The URL HubSpot signed: the configured public URL, or this request's own raw URL."""
    scope = request.scope
    query = scope.get("query_string", b"")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    scheme = scope["scheme"]
    host = request.headers.get("host", "")
    client = scope.get("client")
    if trusted.trusts(client[0] if client else None):
        scheme = _first(request.headers.get("x-forwarded-proto")) or scheme
        host = _first(request.headers.get("x-forwarded-host")) or host
    return build_request_uri(
        public_url=public_url, scheme=scheme, host=host, raw_path=raw_path, query_string=query
    )


def _headers(request: Request) -> dict[str, str]:
    """Header values exactly as sent (never URL-decoded: a `+` in base64 must stay `+`)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}


def _first(value: str | None) -> str | None:
    if value is None:
        return None
    return value.split(",")[0].strip() or None


def _error(
    status: int,
    error: str,
    reason: str,
    *,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    content = {"error": error, "reason": reason}
    if detail is not None:
        content["detail"] = detail
    return JSONResponse(content, status_code=status, headers=headers)


def _not_ready(reason: str, detail: str) -> JSONResponse:
    log.warning("not_ready", extra={"reason": reason})
    return JSONResponse(
        {"status": "unavailable", "reason": reason, "detail": detail}, status_code=503
    )
