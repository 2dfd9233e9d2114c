"""Recording events in the inbox exactly once: a webhook delivery (asynchronously, on the web
process's autocommit connection) or a journal file's events (in the journal reader's
transaction); the NOTIFY that wakes the apply workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.batches import Batch

log = logging.getLogger(__name__)

# NOTIFY channel: the web process says "new events are due"; apply workers LISTEN.
INBOX_CHANNEL = "hubspot_inbox"


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What recording a delivery did."""

    received: int
    stored: int
    # How many of the stored events were of each subscription type (for /metrics).
    stored_by_type: tuple[tuple[str, int], ...] = ()

    @property
    def duplicates(self) -> int:
        """Events already stored, by an earlier delivery or earlier in the same body."""
        return self.received - self.stored


# One statement, one round trip: the whole array goes in as a single jsonb parameter and is
# expanded by Postgres (PERFORMANCE.md: the fastest durable insert measured here). Run on an
# autocommit connection, the statement is its own transaction. No NOTIFY in it: a notifying
# commit holds a server-wide lock until its WAL is flushed, so concurrent deliveries could not
# share a flush; the web process wakes the workers separately (see Notifier).
_RECORD_SQL = """
    WITH stored AS (
        INSERT INTO inbox_events (
            portal_id, subscription_id, event_id, object_id, occurred_at,
            subscription_type, signature_version, payload
        )
        SELECT (e->>'portalId')::bigint,
               coalesce((e->>'subscriptionId')::bigint, 0),
               (e->>'eventId')::bigint,
               coalesce((e->>'objectId')::bigint, (e->>'fromObjectId')::bigint, 0),
               (e->>'occurredAt')::bigint,
               coalesce(e->>'subscriptionType', e->>'eventType'),
               %(signature_version)s,
               e
        FROM jsonb_array_elements(%(events)s::jsonb) AS e
        -- In one total order of the key, oldest first: concurrent deliveries of overlapping
        -- events (a retry racing its first delivery) take their row locks in the same order and
        -- cannot deadlock, and ids follow occurredAt within a delivery.
        ORDER BY 5, 1, 2, 3, 4
        ON CONFLICT ON CONSTRAINT pk_inbox_events DO NOTHING
        RETURNING subscription_type
    )
    SELECT subscription_type, count(*) AS stored FROM stored GROUP BY subscription_type
"""


async def record_delivery(
    connection: AsyncConnection[Any], batch: Batch, *, signature_version: str
) -> RecordResult:
    """Store every new event of `batch` once, atomically.

    `connection` must be in autocommit mode: the single statement commits before this returns.
    """
    if not batch.events:
        return RecordResult(received=0, stored=0)
    cursor = await connection.execute(
        _RECORD_SQL, {"events": batch.json_text, "signature_version": signature_version}
    )
    by_type = tuple((str(kind), int(count)) for kind, count in await cursor.fetchall())
    return RecordResult(
        received=len(batch.events),
        stored=sum(count for _, count in by_type),
        stored_by_type=by_type,
    )


# The signature_version of events read from the Webhooks Journal: no signature, a bearer-token
# read of HubSpot's own API (service/hubspot/journal.py).
JOURNAL_SOURCE = "journal"


def record_events(connection: sa.Connection, json_text: str, *, source: str) -> RecordResult:
    """Store every new event of a JSON array of push-shaped events once, inside the caller's
    transaction (the journal reader commits them with its cursor): record_delivery's statement
    and dedupe. `source` goes in signature_version ("journal" for journal events)."""
    result = connection.exec_driver_sql(
        _RECORD_SQL, {"events": json_text, "signature_version": source}
    )
    by_type = tuple((str(kind), int(count)) for kind, count in result)
    received = connection.exec_driver_sql(
        "SELECT jsonb_array_length(%(events)s::jsonb)", {"events": json_text}
    ).scalar_one()
    return RecordResult(
        received=int(received),
        stored=sum(count for _, count in by_type),
        stored_by_type=by_type,
    )


# At most one NOTIFY per this many seconds. The first delivery after a quiet spell notifies at
# once; under sustained load (when the workers are busy anyway) a NOTIFY per 5 ms was 200 round
# trips a second and ~4% of the web process's CPU (bench/README.md), one per 25 ms is 40.
NOTIFY_INTERVAL_SECONDS = 0.025


class Notifier:
    """Wakes the workers after deliveries were stored: one NOTIFY per NOTIFY_INTERVAL_SECONDS at
    most, in its own transaction, however many deliveries asked (workers also poll as a
    fallback)."""

    def __init__(
        self, pool: AsyncConnectionPool, *, interval: float = NOTIFY_INTERVAL_SECONDS
    ) -> None:
        self._pool = pool
        self._interval = interval
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the sending loop in the background."""
        self._task = asyncio.create_task(self._run(), name="inbox-notifier")

    async def stop(self) -> None:
        """Send what is still owed and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._wanted.is_set():
            await self._send()

    def poke(self) -> None:
        """Something was stored: make sure a NOTIFY follows soon."""
        self._wanted.set()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self._send()
            await asyncio.sleep(self._interval)

    async def _send(self) -> None:
        try:
            async with self._pool.connection(timeout=2) as connection:
                await connection.execute(f"NOTIFY {INBOX_CHANNEL}")
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            # The rows are stored; the workers' polling finds them a few seconds later.
            log.warning("notify_failed", extra={"error": type(exc).__name__})


def wake(connection: sa.Connection) -> None:
    """Wake the apply workers when this transaction commits (NOTIFY is transactional)."""
    connection.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": INBOX_CHANNEL})
