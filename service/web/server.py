"""Run the web app on uvicorn: `serve` in production, and inside `dev`."""

from __future__ import annotations

import signal
import sys

from service.settings import Settings


def run(settings: Settings, database_url: str, host: str, port: int) -> None:
    """Serve the app until SIGTERM or Ctrl-C; the caller's `finally` blocks still run."""
    import uvicorn

    from service.web.app import create_app

    app = create_app(settings, database_url=database_url)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; exiting through SystemExit
    # instead lets `finally` blocks run (the embedded database stops cleanly, the worker ends).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # proxy_headers off: service.web decides itself which peers' X-Forwarded-* to believe,
    # because the signed URL depends on them.
    uvicorn.run(app, host=host, port=port, proxy_headers=False, log_config=None, access_log=False)
