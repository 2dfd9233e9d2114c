"""Run the web app on uvicorn: `serve` in production, and inside `dev`.

It owns how uvicorn is configured: the protocol with read deadlines and the connection cap
(service.web.protocol), the open-files limit that cap must stay under, and the listen backlog.

File descriptors are what a flood of slow clients exhausts, and once accept() fails with
EMFILE the event loop stops accepting for a while and legitimate deliveries are reset. So the
cap is kept below the soft RLIMIT_NOFILE (raised to the hard limit at start) by a margin for
what else the process opens, RESERVE_BASE descriptors plus twice the database pool (the web
pool and its engines; `dev`'s worker threads), and for the listen backlog, because the event
loop may accept a whole backlog of connections in one pass before the protocol sees the
first of them and closes the excess.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.settings import Settings, SettingsError
from service.web.protocol import bounded_protocol

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

log = logging.getLogger(__name__)

RESERVE_BASE = 256  # descriptors kept for logs, engines, DNS, TLS files, dev's worker
MAX_BACKLOG = 2048  # uvicorn's default listen backlog
RAISE_UNLIMITED_TO = 1_048_576  # the soft limit to ask for when the hard one is unlimited
KEEP_ALIVE_SECONDS = 5  # uvicorn's default: an idle kept-alive connection is closed after it


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections one web process holds, and the descriptors it keeps besides."""

    max_connections: int
    backlog: int  # the listen backlog: connections the kernel queues before accept()
    reserve: int  # descriptors for everything that is not a client connection


def run(settings: Settings, database_url: str, host: str, port: int) -> None:
    """Serve the app until SIGTERM or Ctrl-C; the caller's `finally` blocks still run."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from service.web.app import create_app

    app = create_app(settings, database_url=database_url)
    config = server_config(settings, app, host=host, port=port)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; exiting through SystemExit
    # instead lets `finally` blocks run (the embedded database stops cleanly, the worker ends).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.run()
    if not server.started:  # as uvicorn.run: the port was taken or the lifespan failed
        sys.exit(STARTUP_FAILURE)


def server_config(settings: Settings, app: ASGIApp, *, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration for this service: read deadlines and the connection cap."""
    import uvicorn

    open_files = raise_open_files_limit()
    limits = connection_limits(settings, open_files)
    log.info(
        "connection_limits",
        extra={
            "open_files": open_files,
            "max_connections": limits.max_connections,
            "header_timeout_seconds": settings.header_timeout_seconds,
            "body_timeout_seconds": settings.body_timeout_seconds,
        },
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=bounded_protocol(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            max_connections=limits.max_connections,
        ),
        ws="none",  # no websocket routes: an Upgrade header is an ordinary request
        # uvicorn answers 503 to a request when its connections or requests in progress reach
        # this. The protocol keeps connections at max_connections, so only requests still
        # running after their client hung up can reach it: that bounds them too.
        limit_concurrency=limits.max_connections + 1,
        backlog=limits.backlog,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # proxy_headers off: service.web decides itself which peers' X-Forwarded-* to believe,
        # because the signed URL depends on them.
        proxy_headers=False,
        log_config=None,
        access_log=False,
    )


def connection_limits(settings: Settings, open_files: int) -> ConnectionLimits:
    """The cap for a process allowed `open_files` descriptors: MAX_CONNECTIONS when set (a
    SettingsError if it does not fit), else all that fits below the limit."""
    backlog = min(MAX_BACKLOG, max(16, open_files // 8))
    reserve = RESERVE_BASE + 2 * settings.db_pool_size
    room = open_files - backlog - reserve
    if settings.max_connections is None:
        # A limit of a few hundred still gets half of it: the reserve is an estimate.
        return ConnectionLimits(max(room, open_files // 2), backlog, reserve)
    if settings.max_connections > room:
        raise SettingsError(
            f"MAX_CONNECTIONS is invalid: {settings.max_connections} connections do not fit in"
            f" the open-files limit of {open_files} (ulimit -n) with {backlog + reserve} kept"
            f" for the listen backlog and the database pool; at most {room}, or raise the limit"
        )
    return ConnectionLimits(settings.max_connections, backlog, reserve)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (an unprivileged process may); return
    the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = RAISE_UNLIMITED_TO if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # a platform maximum below the hard limit
            log.warning("open_files_limit_not_raised", extra={"error": str(exc)})
        else:
            soft = wanted
    return RAISE_UNLIMITED_TO if soft == resource.RLIM_INFINITY else soft
