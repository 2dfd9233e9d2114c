"""The worker process's heartbeat: a small thread that records the process in worker_heartbeats.

Every `interval` seconds it writes one row (service.heartbeats.beat): host, pid, the stages this
process runs, and when its apply stage last claimed a batch, read from a timestamp the apply
loop sets in memory (so no batch pays a round trip for it). It never blocks a stage: it runs
beside them on its own pooled connection, and a failed beat is logged by type and retried at
the next interval. On a clean stop it deletes its row; rows of long-gone workers are pruned.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa

from service import db, heartbeats

log = logging.getLogger(__name__)

BEAT_SECONDS = 10.0
PRUNE_EVERY_SECONDS = 3600.0


class Heartbeat:
    """Beats for one worker process from a daemon thread while running (a context manager)."""

    def __init__(
        self,
        engine: sa.Engine,
        stages: Sequence[str],
        *,
        last_batch: Callable[[], datetime | None] = lambda: None,
        interval: float = BEAT_SECONDS,
    ) -> None:
        self.engine = engine
        self.stages = tuple(stages)
        self.last_batch = last_batch
        self.interval = interval
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._pruned_at = float("-inf")

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start beating (the first beat is immediate)."""
        log.info("heartbeat_started", extra={"worker_id": self.worker_id, "stages": self.stages})
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beating and delete this worker's row (a clean exit)."""
        self._stop.set()
        self._thread.join(timeout)
        try:
            with self.engine.begin() as connection:
                heartbeats.stopped(connection, self.worker_id)
        except sa.exc.SQLAlchemyError as exc:
            # The row then ages out like a crashed worker's: no longer live after 30 s.
            log.warning("heartbeat_stop_failed", extra={"error": type(exc).__name__})

    def beat_once(self) -> None:
        """Write this worker's row now; prune long-gone workers' rows about once an hour."""
        with self.engine.begin() as connection:
            heartbeats.beat(
                connection,
                self.worker_id,
                host=self.host,
                pid=self.pid,
                stages=self.stages,
                last_batch_at=self.last_batch(),
            )
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY_SECONDS:
                heartbeats.prune(connection)
                self._pruned_at = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat_once()
            except Exception as exc:  # noqa: BLE001 - a missed beat must not end the beating
                # An unmigrated database is said once by the stage loops (schema_not_migrated);
                # beats simply resume once it is migrated.
                if not db.is_unmigrated(exc):
                    # The type only: driver messages can quote values.
                    log.warning("heartbeat_failed", extra={"error": type(exc).__name__})
            self._stop.wait(self.interval)
