"""GET /metrics: Prometheus text, and the web process's own counters behind it.

Each app has a registry of its own (never prometheus_client's global one), so several apps in
one process keep apart. The webhook route counts its answers in memory (`WebhookMetrics`: no
database work per request): deliveries by HTTP code and reason, events stored by subscription
type, and how long each answer took. The gauges of the queues and workers are read from Postgres
at scrape time by service.web.gauges. When METRICS_TOKEN is set, a scrape must send it as
`Authorization: Bearer ...` (compared in constant time), or it is answered 401 with the reason.
"""

from __future__ import annotations

import hmac
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from service.inbox import RecordResult
from service.web.gauges import PREFIX
from service.web.webhook import error_response

# HubSpot waits 5 s for an answer; we aim for milliseconds.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Every answer the webhook route gives, so each series exists (at 0) before it first happens.
KNOWN_ANSWERS = (
    ("200", "stored"),
    ("200", "duplicate"),
    ("200", "empty"),
    ("400", "invalid_body"),
    ("400", "client_disconnect"),
    ("401", "missing_signature"),
    ("401", "bad_signature"),
    ("401", "stale_timestamp"),
    ("413", "body_too_large"),
    ("421", "host_not_allowed"),
    ("503", "storage_unavailable"),
)


class WebhookMetrics:
    """The webhook route's counters and latency histogram, in one app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            PREFIX + "deliveries",
            "Webhook deliveries by HTTP code and reason: stored (new events kept), duplicate"
            " (all seen before), empty, or the reason of a 400, 401, 413 or 503",
            ["code", "reason"],
            registry=registry,
        )
        self.events_stored = Counter(
            PREFIX + "events_stored",
            "Events stored by the webhook (duplicates not counted), by subscription type",
            ["subscription_type"],
            registry=registry,
        )
        self.events_duplicate = Counter(
            PREFIX + "events_duplicate",
            "Events received again (HubSpot retries, repeats within a body): not stored twice",
            registry=registry,
        )
        self.ack = Histogram(
            PREFIX + "ack_seconds",
            "From the start of a webhook request to its answer (any code), in seconds",
            buckets=ACK_BUCKETS,
            registry=registry,
        )
        for code, reason in KNOWN_ANSWERS:
            self.deliveries.labels(code, reason)

    def rejected(self, code: int, reason: str, started: float) -> None:
        """The route answered `code` (400, 401, 413, 421, 503) for `reason`."""
        self.deliveries.labels(str(code), reason).inc()
        self.ack.observe(time.perf_counter() - started)

    def recorded(self, result: RecordResult, started: float) -> None:
        """The route answered 200 after storing `result`."""
        if result.stored:
            reason = "stored"
        elif result.received:
            reason = "duplicate"
        else:
            reason = "empty"
        self.deliveries.labels("200", reason).inc()
        for kind, count in result.stored_by_type:
            self.events_stored.labels(kind).inc(count)
        if result.duplicates:
            self.events_duplicate.inc(result.duplicates)
        self.ack.observe(time.perf_counter() - started)


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text; with METRICS_TOKEN set, only for its bearer."""
    token: str | None = request.app.state.config.settings.metrics_token
    if token is not None:
        refused = _refused(request.headers.get("authorization"), token)
        if refused is not None:
            return error_response(
                401, "unauthorized", refused, headers={"WWW-Authenticate": "Bearer"}
            )
    registry: CollectorRegistry = request.app.state.registry
    # The collector queries Postgres synchronously: off the event loop.
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _refused(header: str | None, token: str) -> str | None:
    """Why the Authorization header does not carry `token`, or None when it does."""
    if header is None:
        return "missing_token"
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "missing_token"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "bad_token"
    return None
