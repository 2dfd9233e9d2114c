"""Worker heartbeats: every statement on worker_heartbeats lives here.

Each worker process keeps one row: who it is (host, pid, the stages it runs), when it started,
when it was last seen and when its apply stage last claimed a batch. A process beats every few
seconds and deletes its row on a clean exit; a row not seen for `LIVE_SECONDS` is a worker that
is gone (killed, or its machine lost), and rows not seen for `PRUNE_SECONDS` are deleted.
Functions take a connection and never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

# A worker beats every ~10 s; three missed beats and it no longer counts as live.
LIVE_SECONDS = 30.0
# A crashed worker's row stays visible for a day (for whoever investigates), then goes.
PRUNE_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One worker process as last recorded."""

    worker_id: str
    host: str
    pid: int
    stages: tuple[str, ...]
    started_at: datetime
    last_seen_at: datetime
    last_batch_at: datetime | None


_BEAT = sa.text(
    """
    INSERT INTO worker_heartbeats (worker_id, host, pid, stages, last_batch_at)
    VALUES (:worker_id, :host, :pid, :stages, :last_batch_at)
    ON CONFLICT (worker_id) DO UPDATE
    SET last_seen_at = now(),
        stages = excluded.stages,
        last_batch_at = greatest(worker_heartbeats.last_batch_at, excluded.last_batch_at)
    """
)


def beat(
    connection: sa.Connection,
    worker_id: str,
    *,
    host: str,
    pid: int,
    stages: Sequence[str],
    last_batch_at: datetime | None = None,
) -> None:
    """Record that `worker_id` is alive now (its row is created on the first beat)."""
    connection.execute(
        _BEAT,
        {
            "worker_id": worker_id,
            "host": host,
            "pid": pid,
            "stages": list(stages),
            "last_batch_at": last_batch_at,
        },
    )


def stopped(connection: sa.Connection, worker_id: str) -> None:
    """A clean exit: the worker's row goes, so it is not mistaken for a lost one."""
    connection.execute(
        sa.text("DELETE FROM worker_heartbeats WHERE worker_id = :worker_id"),
        {"worker_id": worker_id},
    )


def live_workers(
    connection: sa.Connection, within_seconds: float = LIVE_SECONDS
) -> list[Heartbeat]:
    """The workers seen within the last `within_seconds`, oldest first."""
    rows = connection.execute(
        sa.text(
            "SELECT worker_id, host, pid, stages, started_at, last_seen_at, last_batch_at"
            " FROM worker_heartbeats"
            " WHERE last_seen_at > now() - make_interval(secs => :seconds)"
            " ORDER BY started_at, worker_id"
        ),
        {"seconds": within_seconds},
    )
    return [
        Heartbeat(
            worker_id=r.worker_id,
            host=r.host,
            pid=r.pid,
            stages=tuple(r.stages),
            started_at=r.started_at,
            last_seen_at=r.last_seen_at,
            last_batch_at=r.last_batch_at,
        )
        for r in rows
    ]


def prune(connection: sa.Connection, older_than_seconds: float = PRUNE_SECONDS) -> int:
    """Delete the rows of workers not seen for `older_than_seconds`; returns how many."""
    result = connection.execute(
        sa.text(
            "DELETE FROM worker_heartbeats"
            " WHERE last_seen_at < now() - make_interval(secs => :seconds)"
        ),
        {"seconds": older_than_seconds},
    )
    return result.rowcount
