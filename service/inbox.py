"""The inbox queue: every statement on inbox_events lives here.

Ingest validates a delivery and records it exactly once; the apply stage claims due rows and
settles them; privacy erasure scrubs rows; operators list, show and replay them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service import db, partitions
from service.batches import Batch, InvalidBatch, parse_batch

# Ingest's input, a webhook body validated into a Batch, comes from service.batches (pure) and
# is part of this module's API.
__all__ = [
    "INBOX_CHANNEL",
    "Batch",
    "Claimed",
    "Filters",
    "InvalidBatch",
    "Notifier",
    "Outcome",
    "RecordResult",
    "claim_due",
    "get_event",
    "list_events",
    "parse_batch",
    "partitioning",
    "purge",
    "record_delivery",
    "replay",
    "scrub_contacts",
    "settle",
    "wake",
]

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


class Notifier:
    """Wakes the workers after deliveries were stored: one NOTIFY per few milliseconds at most,
    in its own transaction, however many deliveries asked (workers also poll as a fallback)."""

    def __init__(self, pool: AsyncConnectionPool, *, interval: float = 0.005) -> None:
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


# --- the worker's side: claim due rows, settle them ------------------------------------------

# Backoff after a failed attempt n (1-based): 5 s doubling to at most an hour, times 0.5-1.5
# jitter so events that failed together do not all retry in the same instant.
_BACKOFF_SQL = "least(3600, 5 * power(2, least(i.attempts, 20))) * (0.5 + random())"


# A row is named by (id, occurred_at): id has an index per partition, so a statement by id alone
# probes them all; with occurred_at, the partition key, pruning leaves one per row (see _SETTLE).
@dataclass(frozen=True, slots=True)
class Claimed:
    """A due inbox row, locked by the claiming transaction."""

    id: int
    occurred_at: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How applying one claimed row ended: done, ignored or failed (with the error)."""

    id: int
    occurred_at: int
    status: str
    error: str | None = None


# A claim is fair across portals. The portals with open rows are found by a loose index scan
# (one probe of ix_inbox_events_due_by_portal each, however many rows a portal holds); those
# with due rows and not paused (service/portals.py) take turns by their oldest due row (next
# attempt, then id: a claim of one row takes the globally oldest), `limit` portals at most.
# Each takes an equal share of the batch (the first in turn the odd rows), its oldest due rows
# first; what portals with fewer due rows leave goes to those with more, in the same turns
# (`second` takes a portal's share again, which its own locks do not skip, plus its extra).
# Only rows returned are locked, with SKIP LOCKED: workers share a backlog, never a row.
# `_TAKE` states the portal as a range and orders by it, so that only the portal index serves
# it: given `portal_id = x`, the planner may walk ix_inbox_events_due and filter, through
# another portal's backlog (45 ms a probe behind 200,000 rows, measured).
_TAKE = """
    SELECT i.id, i.occurred_at, i.next_attempt_at, i.payload FROM inbox_events i
    WHERE i.portal_id >= {portal} AND i.portal_id <= {portal}
      AND i.status IN ('pending', 'failed') AND i.next_attempt_at <= now()
    ORDER BY i.portal_id, i.next_attempt_at, i.id LIMIT {count} FOR UPDATE SKIP LOCKED
"""
_MORE = "m.quota + spare.slots / spare.n + CAST(m.turn <= mod(spare.slots, spare.n) AS int)"
_CLAIM = sa.text(
    f"""
    WITH RECURSIVE heads AS (
        (SELECT portal_id, next_attempt_at, id FROM inbox_events
         WHERE status IN ('pending', 'failed') ORDER BY portal_id, next_attempt_at, id LIMIT 1)
        UNION ALL
        SELECT n.* FROM heads h, LATERAL (
            SELECT portal_id, next_attempt_at, id FROM inbox_events
            WHERE status IN ('pending', 'failed') AND portal_id > h.portal_id
            ORDER BY portal_id, next_attempt_at, id LIMIT 1) n
    ), turns AS (
        SELECT portal_id, row_number() OVER (ORDER BY next_attempt_at, id) AS turn
        FROM heads WHERE next_attempt_at <= now() AND portal_id NOT IN (
            SELECT portal_id FROM portal_controls WHERE paused_at IS NOT NULL)
        ORDER BY turn LIMIT :limit
    ), shares AS (
        SELECT portal_id, turn, :limit / n + CAST(turn <= mod(:limit, n) AS int) AS quota
        FROM turns, (SELECT greatest(count(*), 1) AS n FROM turns) portals
    ), first AS (
        SELECT s.portal_id, s.turn, s.quota, r.* FROM shares s,
        LATERAL ({_TAKE.format(portal="s.portal_id", count="s.quota")}) r
    ), more AS (
        SELECT portal_id, min(quota) AS quota, row_number() OVER (ORDER BY min(turn)) AS turn
        FROM first GROUP BY portal_id HAVING count(*) = min(quota)
    ), spare AS (
        SELECT :limit - (SELECT count(*) FROM first) AS slots,
               (SELECT greatest(count(*), 1) FROM more) AS n
    ), second AS (
        SELECT m.portal_id, r.* FROM spare, more m,
        LATERAL ({_TAKE.format(portal="m.portal_id", count=_MORE)}) r
        WHERE spare.slots > 0
    )
    SELECT id, occurred_at, payload FROM (
        SELECT id, occurred_at, next_attempt_at, payload FROM first
        WHERE portal_id NOT IN (SELECT portal_id FROM second)
        UNION ALL
        SELECT id, occurred_at, next_attempt_at, payload FROM second
    ) claimed
    ORDER BY next_attempt_at, id
    """
)


def claim_due(connection: sa.Connection, limit: int) -> list[Claimed]:
    """Lock up to `limit` due rows, shared fairly across portals (paused portals skipped); rows
    other workers hold are skipped, never waited for. In one portal, oldest due first."""
    rows = connection.execute(_CLAIM, {"limit": limit})
    return [Claimed(r.id, r.occurred_at, r.payload) for r in rows]


# The join on the partition key prunes at run time, per row, when the rows are probed (a nested
# loop); the batch's range prunes at plan time whatever the join (a hash join scans partitions).
_SETTLE = sa.text(
    f"""
    UPDATE inbox_events i
    SET status = CASE WHEN r.status = 'failed' AND i.attempts + 1 >= :max_attempts THEN 'dead'
                      ELSE r.status END,
        attempts = i.attempts + 1,
        last_error = r.error,
        processed_at = CASE WHEN r.status = 'failed' THEN i.processed_at ELSE now() END,
        next_attempt_at = CASE WHEN r.status = 'failed'
                               THEN now() + make_interval(secs => {_BACKOFF_SQL})
                               ELSE i.next_attempt_at END
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(id bigint, occurred_at bigint, status text, error text)
    WHERE i.id = r.id AND i.occurred_at = r.occurred_at AND i.occurred_at BETWEEN :low AND :high
    """
)


def settle(connection: sa.Connection, outcomes: list[Outcome], *, max_attempts: int) -> None:
    """Record outcomes with one statement; a failure retries later, or is dead at the limit."""
    if not outcomes:
        return
    rows = [
        {"id": o.id, "occurred_at": o.occurred_at, "status": o.status, "error": o.error}
        for o in outcomes
    ]
    stamps = [o.occurred_at for o in outcomes]
    params = {"rows": json.dumps(rows), "low": min(stamps), "high": max(stamps)}
    connection.execute(_SETTLE, {**params, "max_attempts": max_attempts})


# --- operating it: list, show, replay --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """Which inbox rows an operator means."""

    ids: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    subscription_type: str | None = None
    portal_id: int | None = None
    object_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """A SQL condition and its parameters."""
        return db.where(
            equal={
                "subscription_type": self.subscription_type,
                "portal_id": self.portal_id,
                "object_id": self.object_id,
            },
            any_of={"id": self.ids, "status": self.statuses},
            at_least={"received_at": self.since},
            before={"received_at": self.until},
        )


def list_events(
    connection: sa.Connection, filters: Filters, *, limit: int = 50, before_id: int | None = None
) -> list[Any]:
    """The newest inbox rows matching `filters` (without payloads); with `before_id`, the next
    page: the rows older than that id (keyset pagination, on the primary key's id index)."""
    where, params = filters.where()
    if before_id is not None:
        where, params = f"({where}) AND id < :before_id", {**params, "before_id": before_id}
    return list(
        connection.execute(
            sa.text(
                "SELECT id, portal_id, subscription_type, object_id, event_id, occurred_at,"
                " status, attempts, received_at, processed_at, next_attempt_at, last_error"
                f" FROM inbox_events WHERE {where} ORDER BY id DESC LIMIT :limit"
            ),
            {**params, "limit": limit},
        )
    )


def get_event(connection: sa.Connection, event_row_id: int) -> Any | None:
    """One inbox row with its payload and last error, or None."""
    return connection.execute(
        sa.text("SELECT * FROM inbox_events WHERE id = :id"), {"id": event_row_id}
    ).first()


def replay(connection: sa.Connection, filters: Filters) -> int:
    """Re-queue matching rows (dead and ignored included) and wake the workers; returns count."""
    where, params = filters.where()
    result = connection.execute(
        sa.text(
            "UPDATE inbox_events SET status = 'pending', attempts = 0, next_attempt_at = now(),"
            f" last_error = NULL WHERE {where}"
        ),
        params,
    )
    count = result.rowcount
    if count:
        wake(connection)
    return count


def wake(connection: sa.Connection) -> None:
    """Wake the apply workers when this transaction commits (NOTIFY is transactional)."""
    connection.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": INBOX_CHANNEL})


# --- privacy erasure ---------------------------------------------------------------------------

# The contact's values leave every stored raw event; the event itself stays, marked. Rows another
# worker has claimed are skipped, not waited for (that could deadlock on the contact's lock):
# that worker scrubs them itself once it sees the tombstone.
_SCRUB = sa.text(
    """
    UPDATE inbox_events i
    SET payload = (i.payload - 'propertyValue')
                  || jsonb_build_object('propertyValue', NULL, 'erased', true)
    WHERE i.id IN (
        SELECT e.id
        FROM inbox_events e
        JOIN jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(portal_id bigint, object_id bigint)
          ON e.portal_id = r.portal_id AND e.object_id = r.object_id
        WHERE e.payload ? 'propertyValue'
          AND jsonb_typeof(e.payload->'propertyValue') <> 'null'
          AND (e.subscription_type LIKE 'contact.%' OR e.payload->>'objectTypeId' = '0-1')
        FOR UPDATE OF e SKIP LOCKED
    )
    """
)


def scrub_contacts(connection: sa.Connection, contacts: Iterable[tuple[int, int]]) -> None:
    """Remove erased contacts' property values, (portal, contact id), from stored events."""
    rows = db.json_rows({"portal_id": p, "object_id": o} for p, o in sorted(set(contacts)))
    if rows != "[]":
        connection.execute(_SCRUB, {"rows": rows})


# --- retention: partitions by day of occurredAt; purging on purpose --------------------------

# One partition per day of occurredAt (epoch ms), three ready ahead (service/partitions.py). A
# constant, not a setting: a benchmark accelerating time passes its own width to `partitioning`.
PARTITION_SECONDS = partitions.DAY_SECONDS
PURGEABLE_STATUSES = ("dead", "failed")


def partitioning(
    retention_seconds: float, *, width_seconds: float = PARTITION_SECONDS
) -> partitions.Scheme:
    """How inbox_events is partitioned and kept: done and ignored rows go with their partition
    once its days are older than the retention; pending, failed and dead rows outlive it."""
    return partitions.daily(
        "inbox_events",
        "occurred_at",
        retention_seconds=retention_seconds,
        keep="status IN ('pending', 'failed', 'dead')",
        received="received_at",
        width_seconds=width_seconds,
    )


def purge(
    connection: sa.Connection, statuses: Iterable[str], *, received_before: datetime, limit: int
) -> int:
    """Delete up to `limit` dead (or failed) rows received before the time; returns how many.

    Found through the partial index of the rows not done: the cost follows the rows deleted,
    not the table's size. Rows a worker or an operator holds are skipped.
    """
    chosen = sorted(set(statuses))
    if not chosen or not set(chosen) <= set(PURGEABLE_STATUSES):
        raise ValueError(f"purge takes {' or '.join(PURGEABLE_STATUSES)} rows, not {chosen}")
    wanted = ", ".join(f"'{s}'" for s in chosen)  # constants, checked above
    return connection.execute(
        sa.text(
            f"""
            DELETE FROM inbox_events i
            USING (SELECT id, occurred_at FROM inbox_events
                   WHERE status IN ({wanted}) AND received_at < :before
                   LIMIT :limit FOR UPDATE SKIP LOCKED) d
            WHERE i.id = d.id AND i.occurred_at = d.occurred_at
            """
        ),
        {"before": received_before, "limit": limit},
    ).rowcount
