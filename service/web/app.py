"""The web process's ASGI app: `create_app`, its lifespan, and what every route shares.

It owns the app's assembly: the configuration computed once at start-up (settings, webhook
secrets, trusted proxies, the migration head) kept in `app.state.config`; the async connection
pool the webhook stores through (service.web.deadline, one deadline per delivery) and /readyz
checks, opened without waiting so the process comes up before Postgres does; the inbox notifier
that wakes the worker; the small synchronous engine for OAuth installs and /readyz details; the
`no_worker` alert's watch thread (when an alert target is set: it must go out when every worker
is down, see service/alerting/direct.py); the garbage collector's settings while it serves
(`_SteadyHeap`); and the route table. The routes themselves live in
webhook.py, health.py, oauth.py, metrics.py and admin/.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Route

from service import db, inbox
from service.alerting import direct
from service.settings import WEBHOOK_PATH, Settings
from service.web import admin
from service.web.deadline import DeliveryStore
from service.web.gauges import DatabaseCollector
from service.web.health import healthz, readyz
from service.web.metrics import WebhookMetrics, metrics
from service.web.oauth import oauth_callback, oauth_install
from service.web.webhook import AllowedHosts, TrustedProxies, receive_webhook, wrong_path

_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# The collector's first threshold while the app runs (CPython's default is 700). A delivery
# parses into a few hundred containers, and those of the requests in flight are scanned by every
# young collection: at 700 one ran every ~9 deliveries, ~2.5 µs (wall) per event stored in the
# bench (bench/README.md); at 10,000, 0.1 µs.
GC_YOUNG_THRESHOLD = 10_000


class _SteadyHeap:
    """The garbage collector while apps serve (tests run several in one process): once the
    first has started, what start-up made (lives as long as the process) is frozen out of every
    scan, and young collections run every GC_YOUNG_THRESHOLD allocations; the last app to stop
    puts both back."""

    def __init__(self) -> None:
        self.running = 0
        self.thresholds = gc.get_threshold()

    def enter(self) -> None:
        if self.running == 0:
            self.thresholds = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *self.thresholds[1:])
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        if self.running == 0:
            gc.set_threshold(*self.thresholds)
            gc.unfreeze()


_steady_heap = _SteadyHeap()


@dataclass(frozen=True, slots=True)
class Config:
    """What the endpoints need, computed once at start-up."""

    settings: Settings
    secrets: tuple[str, ...]
    trusted: TrustedProxies
    hosts: AllowedHosts
    head: str


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    alert_seconds: float | None = None,
) -> Starlette:
    """Build the ASGI app. `database_url` overrides settings (the embedded server's URL);
    `alert_seconds` is how often the `no_worker` alert is evaluated (default ALERT_INTERVAL)."""
    settings = Settings.from_env() if settings is None else settings
    url = database_url or settings.database_url
    if url is None:
        raise ValueError("create_app needs a database URL (DATABASE_URL or the embedded server)")
    config = Config(
        settings=settings,
        secrets=settings.require_client_secret(),
        trusted=TrustedProxies(settings.forwarded_allow_ips),
        hosts=AllowedHosts(settings.allowed_hosts),
        head=db.migration_head(),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The webhook's storage: one deadline per delivery over its own pool (deadline.py).
        store = DeliveryStore(
            url,
            pool_size=settings.db_pool_size,
            deadline_seconds=settings.request_deadline_seconds,
        )
        pool = store.pool
        # Do not wait for the database here: the process must come up (and /healthz answer)
        # while Postgres is still starting; requests meanwhile get 503 and HubSpot retries.
        await pool.open(wait=False)
        app.state.store = store
        app.state.pool = pool
        notifier = inbox.Notifier(pool)
        notifier.start()
        app.state.notifier = notifier
        # OAuth installs, /readyz details and /metrics scrapes use the synchronous engine;
        # rare, so small.
        app.state.engine = db.create_engine(url, pool_size=1)
        collector = DatabaseCollector(app.state.engine)
        registry.register(collector)
        # A thread with its own engine: its sends and waits never touch the webhook's pool.
        watch: direct.Watch | None = None
        if settings.alert_slack_webhook_url or settings.alert_webhook_url:
            watch = direct.Watch(db.create_engine(url, pool_size=1), settings, alert_seconds)
            watch.start()
        _steady_heap.enter()
        try:
            yield
        finally:
            _steady_heap.leave()
            if watch is not None:
                watch.stop()
                watch.engine.dispose()
            registry.unregister(collector)
            await notifier.stop()
            await pool.close()
            app.state.engine.dispose()

    app = Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive_webhook, methods=["POST"]),
            # Matching here, /webhooks/hubspot/ never gets Starlette's slash redirect (wrong_path).
            Route("/webhooks{rest:path}", wrong_path, methods=_ANY_METHOD),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/oauth/install", oauth_install, methods=["GET"]),
            Route("/oauth/callback", oauth_callback, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *admin.mount(),
        ],
        lifespan=lifespan,
    )
    app.state.config = config
    # A registry per app, not prometheus_client's global one: apps in one process keep apart.
    registry = CollectorRegistry()
    app.state.registry = registry
    app.state.webhook_metrics = WebhookMetrics(registry)
    return app
