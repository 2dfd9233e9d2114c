"""The web process: routes, lifespan, thin endpoints. Business logic lives in service.inbox."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html import escape
from secrets import token_urlsafe
from urllib.parse import urlsplit

import psycopg
import psycopg_pool
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from service import db, inbox
from service.hubspot import client as hubspot_api
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
        notifier = inbox.Notifier(pool)
        notifier.start()
        app.state.notifier = notifier
        # OAuth installs and /readyz details use the synchronous API client; rare, so small.
        app.state.engine = db.create_engine(url, pool_size=1)
        try:
            yield
        finally:
            await notifier.stop()
            await pool.close()
            app.state.engine.dispose()

    app = Starlette(
        routes=[
            Route("/webhooks/hubspot", receive_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/oauth/install", oauth_install, methods=["GET"]),
            Route("/oauth/callback", oauth_callback, methods=["GET"]),
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
    if result.stored:
        request.app.state.notifier.poke()
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
    # A portal whose OAuth tokens stopped working does not make the service unready (the
    # others go on), but it is reported here as well as in the logs.
    try:
        reinstall = await run_in_threadpool(
            hubspot_api.portals_needing_reinstall, request.app.state.engine
        )
    except sa.exc.SQLAlchemyError as exc:
        return _not_ready("database_unreachable", type(exc).__name__)
    body: dict[str, object] = {"status": "ready", "schema": current}
    if reinstall:
        body["portals_needing_reinstall"] = reinstall
    return JSONResponse(body)


def _redirect_uri(request: Request, settings: Settings) -> str:
    """Where HubSpot sends the user back: beside the public webhook URL, else this host."""
    if settings.webhook_public_url is not None:
        parts = urlsplit(settings.webhook_public_url)
        return f"{parts.scheme}://{parts.netloc}/oauth/callback"
    return str(request.url_for("oauth_callback"))


async def oauth_install(request: Request) -> Response:
    """GET /oauth/install: send the installing user to HubSpot's consent page."""
    config: _Config = request.app.state.config
    if config.settings.client_id is None:
        return _error(
            404, "oauth_not_configured", "set HUBSPOT_CLIENT_ID to install as a public app"
        )
    state = hubspot_api.sign_state(config.secrets[0], now=time.time(), nonce=token_urlsafe(16))
    url = hubspot_api.authorize_url(
        client_id=config.settings.client_id,
        redirect_uri=_redirect_uri(request, config.settings),
        scopes=config.settings.scopes,
        state=state,
    )
    return RedirectResponse(url, status_code=302)


async def oauth_callback(request: Request) -> Response:
    """GET /oauth/callback: check the state, trade the code for tokens, store them."""
    config: _Config = request.app.state.config
    if config.settings.client_id is None:
        return _error(
            404, "oauth_not_configured", "set HUBSPOT_CLIENT_ID to install as a public app"
        )
    code, state = request.query_params.get("code"), request.query_params.get("state")
    if not code or not state:
        error = request.query_params.get("error_description") or "missing code or state"
        return _page(400, "Install failed", error)
    try:
        hubspot_api.check_state(config.secrets, state, now=time.time())
    except hubspot_api.InvalidState as exc:
        log.warning("oauth_rejected", extra={"reason": str(exc)})
        return _page(400, "Install failed", f"{exc}.")
    engine: sa.Engine = request.app.state.engine
    api = hubspot_api.from_settings(config.settings, engine)
    assert api is not None  # client_id is set
    try:
        portal_id, tokens, scopes = await run_in_threadpool(
            api.exchange_code, code, _redirect_uri(request, config.settings)
        )
    except hubspot_api.HubSpotError as exc:
        log.error("oauth_exchange_failed", extra={"error": type(exc).__name__})
        return _page(502, "Install failed", "HubSpot did not accept the authorization code.")
    await run_in_threadpool(hubspot_api.save_tokens, engine, portal_id, tokens, scopes)
    log.info("oauth_installed", extra={"portal_id": portal_id})
    return _page(200, "Installed", f"The app is installed for HubSpot account {portal_id}.")


def _page(status: int, title: str, message: str) -> HTMLResponse:
    body = (
        f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p>"
    )
    return HTMLResponse(body, status_code=status)


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
