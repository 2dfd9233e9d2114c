"""POST /webhooks/hubspot: take a delivery from HubSpot and answer 200 only once it is committed.

It owns the route's checks and answers: the body size limit, the signature check against the
URL HubSpot signed (the configured public URL, or this request's own URL, rebuilt from the
X-Forwarded-* headers of the peers FORWARDED_ALLOW_IPS names, none by default) once the host it
names is allowed (421 unless ALLOWED_HOSTS, when set, lists it), parsing, storing through
service.inbox inside the request's deadline (service.web.deadline), and the JSON error bodies
(421, 413, 401, 400, and 503 with Retry-After when the events were not stored).
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
from service.web import deadline

if TYPE_CHECKING:
    from service.web.app import Config
    from service.web.deadline import DeliveryStore
    from service.web.metrics import WebhookMetrics

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "10"

# What a database that is down, restarting, out of pooled connections or too slow raises.
STORAGE_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout, OSError, deadline.DeadlineExceeded)
# The 503's detail, by why the events were not stored (deadline.cause).
_NOT_STORED = {
    "deadline": "the database did not answer within the request's deadline",
    "busy": "too many deliveries are waiting for the database",
    "unavailable": "the database is unavailable",
}


_STORED_BODY = b'{"received":%d,"stored":%d,"duplicates":%d}'


class BodyTooLarge(Exception):
    """The request body exceeds MAX_BODY_BYTES."""


class HostNotAllowed(Exception):
    """The request names a host (Host, or a trusted proxy's X-Forwarded-Host) not allowed."""

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host[:100]


async def receive_webhook(request: Request) -> Response:
    """POST /webhooks/hubspot: size limit, signature, parse, store once, 200 only when committed."""
    config: Config = request.app.state.config
    counted: WebhookMetrics = request.app.state.webhook_metrics
    limit = config.settings.max_body_bytes
    started = time.perf_counter()
    try:
        uri = _signed_uri(request, config)
    except HostNotAllowed as exc:  # before the body and the signature: nothing to check
        log.warning("webhook_rejected", extra={"reason": "host_not_allowed", "host": exc.host})
        counted.rejected(421, "host_not_allowed", started)
        reason = f"this service does not answer for {exc.host!r} (ALLOWED_HOSTS)"
        return error_response(421, "host_not_allowed", reason)
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
            uri=uri,
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
    store: DeliveryStore = request.app.state.store
    try:
        result = await store.record(batch, check.version, started=started)
    except STORAGE_ERRORS as exc:
        why = deadline.cause(exc)
        log.error(
            "webhook_not_stored",
            extra={
                "reason": type(exc).__name__,
                "cause": why,
                "events": len(batch.events),
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        counted.rejected(503, "storage_unavailable", started)
        return error_response(
            503,
            "storage_unavailable",
            "the events were not stored; retry later",
            detail=_NOT_STORED[why],
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    if result.stored:
        request.app.state.notifier.poke()
    if log.isEnabledFor(logging.INFO):  # the line's fields cost more than the check
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
    # The JSON JSONResponse would render, without its encoder: three integers.
    content = _STORED_BODY % (result.received, result.stored, result.duplicates)
    return Response(content, media_type="application/json")


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
        if host is None or not self.networks:  # none trusted (the default): no address to parse
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class AllowedHosts:
    """The hosts a request may name (ALLOWED_HOSTS): `name` with any port, `name:port` with
    that port only, `*.name` any subdomain of name; when none is configured, any host."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.entries = [_split_host(entry) for entry in entries]

    def allows(self, host: str) -> bool:
        """Whether a Host header value (`name[:port]`, `[v6]:port`) is allowed."""
        if not self.entries:
            return True
        name, port = _split_host(host)
        if not name:
            return False
        for pattern, wanted in self.entries:
            if wanted is not None and port != wanted:
                continue
            if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
                return True
        return False


def _split_host(host: str) -> tuple[str, str | None]:
    """(name, port) of a host, lower case, IPv6 without brackets; ("", None) when malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "", None
        return name, rest[1:] or None
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name.rstrip("."), port
    return host.rstrip("."), None  # no port, or a bare IPv6 address (an ALLOWED_HOSTS entry)


def _signed_uri(request: Request, config: Config) -> str:
    """The URL HubSpot signed: the configured public URL, or this request's own raw URL.

    Raises HostNotAllowed when the host the request names (Host, or the X-Forwarded-Host of a
    trusted proxy) is not allowed.
    """
    scope = request.scope
    query = scope.get("query_string", b"")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    scheme = scope["scheme"]
    host = request.headers.get("host", "")
    client = scope.get("client")
    if config.trusted.trusts(client[0] if client else None):
        scheme = _first(request.headers.get("x-forwarded-proto")) or scheme
        host = _first(request.headers.get("x-forwarded-host")) or host
    if not config.hosts.allows(host):
        raise HostNotAllowed(host)
    return build_request_uri(
        public_url=config.settings.webhook_public_url,
        scheme=scheme,
        host=host,
        raw_path=raw_path,
        query_string=query,
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
