"""POST /webhooks/hubspot: take a delivery from HubSpot and answer 200 only once it is committed.

It owns the route's checks and answers: the body size limit, the signature check against the
URL HubSpot signed (the configured public URL, or this request's own URL, rebuilt from the
X-Forwarded-* headers of trusted proxies only), parsing and storing through service.inbox on a
pooled connection, and the JSON error bodies (413, 401, 400, and 503 with Retry-After when the
events were not stored).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import TYPE_CHECKING

import psycopg
import psycopg_pool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from service import inbox
from service.settings import WEBHOOK_PATH
from service.signature import InvalidSignature, build_request_uri, verify_request

if TYPE_CHECKING:
    from service.web.app import Config
    from service.web.metrics import WebhookMetrics

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "10"

# What a database that is down, restarting or out of pooled connections raises.
STORAGE_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout, OSError)


class BodyTooLarge(Exception):
    """The request body exceeds MAX_BODY_BYTES."""


async def receive_webhook(request: Request) -> Response:
    """POST /webhooks/hubspot: size limit, signature, parse, store once, 200 only when committed."""
    config: Config = request.app.state.config
    counted: WebhookMetrics = request.app.state.webhook_metrics
    limit = config.settings.max_body_bytes
    started = time.perf_counter()
    try:
        body = await _read_body(request, limit)
    except BodyTooLarge:
        log.warning("webhook_rejected", extra={"reason": "body_too_large"})
        counted.rejected(413, "body_too_large", started)
        return error_response(413, "body_too_large", f"body exceeds {limit} bytes")
    except ClientDisconnect:
        counted.rejected(400, "client_disconnect", started)
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
        counted.rejected(401, exc.reason, started)
        return error_response(401, "unauthorized", exc.reason, detail=str(exc))
    try:
        batch = inbox.parse_batch(body)
    except inbox.InvalidBatch as exc:
        log.warning("webhook_rejected", extra={"reason": "invalid_body", "detail": str(exc)})
        counted.rejected(400, "invalid_body", started)
        return error_response(400, "invalid_body", str(exc))
    try:
        result = await _record(request.app.state.pool, batch, check.version)
    except STORAGE_ERRORS as exc:
        log.error(
            "webhook_not_stored",
            extra={"reason": type(exc).__name__, "events": len(batch.events)},
        )
        counted.rejected(503, "storage_unavailable", started)
        return error_response(
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
    counted.recorded(result, started)
    return JSONResponse(
        {"received": result.received, "stored": result.stored, "duplicates": result.duplicates}
    )


async def wrong_path(request: Request) -> Response:
    """Any other path under /webhooks: 404 naming the real one. Never a redirect to it: HubSpot
    signed the URL it was given, so the target URL itself must be fixed in the app settings."""
    if request.scope["path"] == WEBHOOK_PATH:  # the right path, another method than POST
        return error_response(
            405, "method_not_allowed", f"{WEBHOOK_PATH} takes POST", headers={"Allow": "POST"}
        )
    log.warning("webhook_wrong_path", extra={"path": request.url.path[:200]})
    return error_response(
        404, "not_found", f"the webhook path is {WEBHOOK_PATH}: HubSpot's target URL must end so"
    )


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


class TrustedProxies:
    """Peers whose X-Forwarded-* headers are believed, as uvicorn's FORWARDED_ALLOW_IPS."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.any = "*" in entries
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if e != "*"]

    def trusts(self, host: str | None) -> bool:
        """Whether the peer at `host` (an IP address) is one of the trusted proxies."""
        if self.any:
            return True
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _signed_uri(request: Request, public_url: str | None, trusted: TrustedProxies) -> str:
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


def error_response(
    status: int,
    error: str,
    reason: str,
    *,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body of this service: `error`, `reason`, and `detail` when there is one."""
    content = {"error": error, "reason": reason}
    if detail is not None:
        content["detail"] = detail
    return JSONResponse(content, status_code=status, headers=headers)
