"""The loop every stage runs in: do a step, and when there was nothing to do, wait for a NOTIFY.

A stage's step returns how much it did; after an empty step the loop sleeps until its channel
is notified (ingest NOTIFYs the inbox channel, an enqueued action run the actions channel) or
its poll interval passes, whichever comes first. Polling stays as the fallback: a NOTIFY lost
while the listening connection was down only delays work by one interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
import sqlalchemy as sa

from service import db

log = logging.getLogger(__name__)


class Wakeup:
    """A LISTEN connection on one channel, opened lazily and re-opened after an error."""

    def __init__(self, engine: sa.Engine, channel: str) -> None:
        self._url = db.libpq_url(engine.url.render_as_string(hide_password=False))
        self._channel = channel
        self._connection: psycopg.Connection[object] | None = None

    def listen(self) -> None:
        """Start listening now (before the step), so a NOTIFY sent during it is not missed."""
        if self._connection is None:
            connection: psycopg.Connection[object] = psycopg.connect(self._url, autocommit=True)
            connection.execute(f"LISTEN {self._channel}")
            self._connection = connection

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Return on a notification, after `seconds`, or within a second of `stop` being set."""
        self.listen()
        assert self._connection is not None
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices so a stop request is seen within a second.
            if list(self._connection.notifies(timeout=min(remaining, 1.0), stop_after=1)):
                return

    def close(self) -> None:
        """Close the connection; the next wait opens a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _SchemaWait:
    """The loops of this process that found the schema missing: the first one says so, the
    others (and every retry) stay quiet until all of them got through a step again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: set[object] = set()

    def missing(self, loop: object) -> None:
        with self._lock:
            if not self._waiting:
                log.warning("schema_not_migrated", extra={"hint": db.NOT_MIGRATED})
            self._waiting.add(loop)

    def done(self, loop: object) -> None:
        with self._lock:
            self._waiting.discard(loop)


_schema = _SchemaWait()


def run_loop(
    name: str,
    step: Callable[[], int],
    stop: threading.Event,
    *,
    idle_seconds: float,
    wakeup: Wakeup | None = None,
    error_seconds: float | None = None,
) -> None:
    """Call `step` until `stop` is set; after a step that found nothing to do, wait for the
    wakeup's NOTIFY or `idle_seconds`. An error is logged (its type only) and the loop goes on
    after `error_seconds` (default `idle_seconds`). Missing tables (a database not migrated
    yet) are said once per process, not per loop or attempt, and waited out the same way.
    """
    log.info("loop_started", extra={"loop": name})
    me = object()
    while not stop.is_set():
        try:
            if wakeup is not None:
                wakeup.listen()
            did = step()
            _schema.done(me)
            if did:
                continue
            if wakeup is not None:
                wakeup.wait(idle_seconds, stop)
            else:
                stop.wait(idle_seconds)
        except Exception as exc:  # noqa: BLE001 - a stage must outlive any one failure
            if db.is_unmigrated(exc):
                _schema.missing(me)
            else:  # the type only: driver messages can quote row values (personal data)
                log.error("loop_error", extra={"loop": name, "error": type(exc).__name__})
            if wakeup is not None:
                wakeup.close()
            stop.wait(idle_seconds if error_seconds is None else error_seconds)
    _schema.done(me)
    if wakeup is not None:
        wakeup.close()
    log.info("loop_stopped", extra={"loop": name})
