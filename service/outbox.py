"""The outbox queue: every statement on action_runs (and own_writes) lives here.

Rules enqueue runs in the apply transaction (unique per event, rule and action, so replays never
double-fire); the act stage leases due runs, executes them with no transaction open, settles.

The table is partitioned by day of the firing event's occurredAt (`event_occurred_at`, part of
the key: an inbox row has one occurredAt, so the key dedupes as (event, rule, action) did), on
the inbox's day boundaries; `partitioning` says how service/partitions.py keeps it. Done runs go
with their partition after ACTION_RETENTION; pending, failed and dead runs never do.

A run is leased (its next attempt pushed past the lease) in a short transaction, executed, then
marked done with a short result, or failed with the error and retried with exponential backoff
and jitter, or dead after ACTION_MAX_ATTEMPTS (or at once when the target refused it for good).
Dead runs stay listed and can be replayed. Downstream outages never touch ingest or apply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service import db, partitions

log = logging.getLogger(__name__)

# NOTIFY channel: a new or replayed run is due; the act stage LISTENs and starts it at once.
ACTIONS_CHANNEL = "hubspot_actions"
LEASE_SECONDS = 300
RUN_STATUSES = ("pending", "done", "failed", "dead")


def wake(connection: sa.Connection) -> None:
    """Wake the act stage when this transaction commits (NOTIFY is transactional)."""
    connection.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": ACTIONS_CHANNEL})


_ENQUEUE = sa.text(
    """
    INSERT INTO action_runs
        (portal_id, inbox_id, rule, action_index, event_occurred_at, action, object_type,
         object_id, payload)
    SELECT r.portal_id, r.inbox_id, r.rule, r.action_index, r.event_occurred_at, r.action,
           r.object_type, r.object_id, r.payload
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, inbox_id bigint, rule text, action_index int,
              event_occurred_at bigint, action text, object_type text, object_id bigint,
              payload jsonb)
    ON CONFLICT DO NOTHING
    """
)


def enqueue(connection: sa.Connection, runs: Sequence[Mapping[str, Any]]) -> int:
    """Add runs (portal_id, inbox_id, rule, action_index, event_occurred_at, action,
    object_type, object_id, payload); a run already enqueued for that event, rule and action is
    left alone. `event_occurred_at` is the firing event's occurredAt (epoch ms): its partition.

    Returns how many are new; when some are, the act stage is woken on commit.
    """
    if not runs:
        return 0
    missing = [r for r in runs if not isinstance(r.get("event_occurred_at"), int)]
    if missing:
        raise ValueError("an action run needs its event's occurredAt (event_occurred_at, ms)")
    rows = json.dumps(list(runs), ensure_ascii=False, default=str)
    added = int(connection.execute(_ENQUEUE, {"rows": rows}).rowcount)
    if added:
        wake(connection)
    return added


@dataclass(frozen=True, slots=True)
class Run:
    """A leased action run."""

    id: int
    portal_id: int
    inbox_id: int
    rule: str
    action_index: int
    action: str
    object_type: str
    object_id: int
    payload: dict[str, Any]
    attempts: int
    # An earlier attempt may have reached the target: a retry, or a replay of a run that had
    # failed (replay keeps last_error), so a create that cannot be repeated looks first.
    tried_before: bool


_CLAIM = sa.text(
    f"""
    UPDATE action_runs r
    SET next_attempt_at = now() + interval '{LEASE_SECONDS} seconds', attempts = r.attempts + 1
    WHERE r.id IN (
        SELECT id FROM action_runs
        WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
          AND portal_id NOT IN (SELECT portal_id FROM portal_controls WHERE paused_at IS NOT NULL)
        ORDER BY next_attempt_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING r.id, r.portal_id, r.inbox_id, r.rule, r.action_index, r.action, r.object_type,
              r.object_id, r.payload, r.attempts,
              (r.attempts > 1 OR r.last_error IS NOT NULL) AS tried_before
    """
)


def claim(connection: sa.Connection, limit: int = 20) -> list[Run]:
    """Lease up to `limit` due runs of portals not paused (a crashed executor's lease simply
    runs out)."""
    return [Run(**row._mapping) for row in connection.execute(_CLAIM, {"limit": limit})]


def complete(connection: sa.Connection, run_id: int, result: str) -> None:
    """The action happened."""
    connection.execute(
        sa.text(
            "UPDATE action_runs SET status = 'done', result = :result, last_error = NULL,"
            " done_at = now() WHERE id = :id"
        ),
        {"id": run_id, "result": result[:500]},
    )


def fail(
    connection: sa.Connection,
    run_id: int,
    error: str,
    *,
    max_attempts: int,
    permanent: bool,
    retry_after: float | None = None,
) -> str:
    """The action did not happen: retry later with backoff, or dead; returns the new status."""
    status: str = connection.execute(
        sa.text(
            """
            UPDATE action_runs
            SET status = CASE WHEN :permanent OR attempts >= :max THEN 'dead' ELSE 'failed' END,
                last_error = :error,
                next_attempt_at = now() + make_interval(secs => greatest(
                    :retry_after,
                    least(3600, 10 * power(2, least(attempts - 1, 20))) * (0.5 + random())))
            WHERE id = :id
            RETURNING status
            """
        ),
        {
            "id": run_id,
            "error": error[:2000],
            "max": max_attempts,
            "permanent": permanent,
            "retry_after": min(retry_after or 0.0, 3600.0),  # the target's Retry-After, bounded
        },
    ).scalar_one()
    return status


@dataclass(frozen=True, slots=True)
class RunFilters:
    """Which action runs an operator means."""

    ids: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    rule: str | None = None
    portal_id: int | None = None
    since: datetime | None = None
    inbox_id: int | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """A SQL condition and its parameters."""
        return db.where(
            equal={"rule": self.rule, "portal_id": self.portal_id, "inbox_id": self.inbox_id},
            any_of={"id": self.ids, "status": self.statuses},
            at_least={"created_at": self.since},
        )


def list_runs(
    connection: sa.Connection,
    filters: RunFilters,
    *,
    limit: int = 50,
    before_id: int | None = None,
) -> list[Any]:
    """The newest runs matching `filters` (payloads left out: they can hold personal data);
    with `before_id`, the next page: the runs older than that id (keyset pagination)."""
    where, params = filters.where()
    if before_id is not None:
        where, params = f"({where}) AND id < :before_id", {**params, "before_id": before_id}
    return list(
        connection.execute(
            sa.text(
                "SELECT id, portal_id, inbox_id, rule, action_index, action, object_type,"
                " object_id, status, attempts, next_attempt_at, last_error, result, created_at,"
                f" done_at FROM action_runs WHERE {where} ORDER BY id DESC LIMIT :limit"
            ),
            {**params, "limit": limit},
        )
    )


def replay(connection: sa.Connection, filters: RunFilters) -> int:
    """Run matching runs again (dead ones included); returns how many. The last error stays
    until the run succeeds: it tells the executor an earlier attempt may have landed."""
    where, params = filters.where()
    count = connection.execute(
        sa.text(
            "UPDATE action_runs SET status = 'pending', attempts = 0, next_attempt_at = now()"
            # A run whose payload a privacy deletion erased has nothing left to send.
            f" WHERE ({where}) AND NOT (payload ? 'erased')"
        ),
        params,
    ).rowcount
    if count:
        wake(connection)
    return int(count)


PURGEABLE_STATUSES = ("dead", "failed")


def purge(
    connection: sa.Connection, statuses: Iterable[str], *, created_before: datetime, limit: int
) -> int:
    """Delete up to `limit` dead (or failed) runs created before the time; returns how many.

    Through the partial index of the runs not done; runs the act stage holds are skipped. A
    purged run is forgotten: replaying its event fires the rule again.
    """
    chosen = sorted(set(statuses))
    if not chosen or not set(chosen) <= set(PURGEABLE_STATUSES):
        raise ValueError(f"purge takes {' or '.join(PURGEABLE_STATUSES)} runs, not {chosen}")
    wanted = ", ".join(f"'{s}'" for s in chosen)  # constants, checked above
    return connection.execute(
        sa.text(
            f"""
            DELETE FROM action_runs a
            USING (SELECT portal_id, inbox_id, rule, action_index, event_occurred_at
                   FROM action_runs
                   WHERE status IN ({wanted}) AND created_at < :before
                   LIMIT :limit FOR UPDATE SKIP LOCKED) d
            WHERE a.portal_id = d.portal_id AND a.inbox_id = d.inbox_id AND a.rule = d.rule
              AND a.action_index = d.action_index AND a.event_occurred_at = d.event_occurred_at
            """
        ),
        {"before": created_before, "limit": limit},
    ).rowcount


def get_run(connection: sa.Connection, run_id: int) -> Any | None:
    """One run in full (payload, error, result), or None."""
    return connection.execute(
        sa.text("SELECT * FROM action_runs WHERE id = :id"), {"id": run_id}
    ).first()


# Action payloads rendered from an erased contact go; one not yet run can no longer run.
_SCRUB = sa.text(
    """
    UPDATE action_runs a
    SET payload = jsonb_build_object('action', a.action, 'erased', true),
        status = CASE WHEN a.status = 'done' THEN 'done' ELSE 'dead' END,
        last_error = CASE WHEN a.status = 'done' THEN a.last_error
                          ELSE 'contact erased by a privacy deletion' END
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(portal_id bigint, object_id bigint)
    WHERE a.portal_id = r.portal_id AND a.object_type = 'contacts' AND a.object_id = r.object_id
      AND NOT (a.payload ? 'erased')
    """
)


def scrub_contacts(connection: sa.Connection, contacts: Iterable[tuple[int, int]]) -> None:
    """Erase the payloads of runs about these (portal, contact id); pending ones become dead."""
    rows = db.json_rows({"portal_id": p, "object_id": o} for p, o in sorted(set(contacts)))
    if rows != "[]":
        connection.execute(_SCRUB, {"rows": rows})


def record_own_write(
    connection: sa.Connection, portal_id: int, object_type: str, object_id: int
) -> None:
    """Remember a record our action created, so its webhook echo fires no rule."""
    connection.execute(
        sa.text(
            "INSERT INTO own_writes (portal_id, object_type, object_id) VALUES (:p, :t, :o)"
            " ON CONFLICT DO NOTHING"
        ),
        {"p": portal_id, "t": object_type, "o": object_id},
    )


# One partition per day of the firing event's occurredAt, on the inbox's boundaries (the same
# width), three ready ahead.
def partitioning(
    retention_seconds: float, *, width_seconds: float = partitions.DAY_SECONDS
) -> partitions.Scheme:
    """How action_runs is partitioned and kept: done runs go with their partition once its days
    are older than the retention; pending, failed and dead runs outlive it (still claimable and
    replayable, from the default partition)."""
    return partitions.daily(
        "action_runs",
        "event_occurred_at",
        retention_seconds=retention_seconds,
        keep="status IN ('pending', 'failed', 'dead')",
        received="created_at",
        width_seconds=width_seconds,
    )
