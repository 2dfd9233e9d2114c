"""Operating the inbox: list, show and replay rows (and a journal entry's events again after a
parser fix), scrub an erased contact's values, partition by day and purge on purpose."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service import db, partitions
from service.inbox.record import wake

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


# A journal entry read again (`journal replay`): its events already stored whose payload differs
# from what the parser makes of the kept file now get the new payload and are due again, so a
# parser fix re-applies them (the mirror's registers converge; action runs are unique per (inbox
# event, rule, action): nothing fires twice). Rows privacy erasure scrubbed keep their scrubbed
# payload. Matched on the primary key (occurred_at, the partition key, included).
_REPLAY_PAYLOADS = """
    WITH incoming AS (
        SELECT (e->>'portalId')::bigint AS portal_id,
               coalesce((e->>'subscriptionId')::bigint, 0) AS subscription_id,
               (e->>'eventId')::bigint AS event_id,
               coalesce((e->>'objectId')::bigint, (e->>'fromObjectId')::bigint, 0) AS object_id,
               (e->>'occurredAt')::bigint AS occurred_at,
               e AS payload
        FROM jsonb_array_elements(%(events)s::jsonb) AS e
    )
    UPDATE inbox_events i
    SET payload = n.payload, status = 'pending', attempts = 0, next_attempt_at = now(),
        last_error = NULL
    FROM incoming n
    WHERE i.portal_id = n.portal_id AND i.subscription_id = n.subscription_id
      AND i.event_id = n.event_id AND i.object_id = n.object_id
      AND i.occurred_at = n.occurred_at
      AND i.payload <> n.payload AND NOT i.payload ? 'erased'
"""


def replay_payloads(connection: sa.Connection, json_text: str) -> int:
    """Give stored events of a JSON array of push-shaped events their payload from it where it
    differs, and make them due again (waking the workers); how many changed."""
    count = connection.exec_driver_sql(_REPLAY_PAYLOADS, {"events": json_text}).rowcount
    if count:
        wake(connection)
    return count


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
