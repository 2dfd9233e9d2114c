"""The fetch queue: every statement on hydration_requests lives here.

The mirror asks for a record to be fetched from HubSpot (created, restored, redacted, merged)
in its apply transaction; one row per record however often it is asked. The hydrate stage
leases up to 100 due requests of one (portal, object type) for one batch read, then completes
or fails them; operators list and retry them. A request that adds or re-arms rows NOTIFYs
CHANNEL on commit, so a waiting hydrate stage starts at once rather than at its next poll.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service import db

ObjectKey = tuple[int, str, int]
# NOTIFY channel: records were asked for; the hydrate stage LISTENs and claims them at once.
CHANNEL = "hubspot_fetches"
BATCH_READ_LIMIT = 100  # HubSpot's batch read takes at most 100 ids
LEASE_SECONDS = 120
STATUSES = ("pending", "dead")


@dataclass(frozen=True, slots=True)
class Wanted:
    """A record whose current state must be fetched from HubSpot, and why."""

    key: ObjectKey
    reason: str


_REQUEST = sa.text(
    f"""
    WITH asked AS (
    INSERT INTO hydration_requests (portal_id, object_type, object_id, reason)
    SELECT r.portal_id, r.object_type, r.object_id, r.reason
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, object_id bigint, reason text)
    WHERE NOT EXISTS (
        SELECT 1 FROM crm_objects o
        WHERE o.portal_id = r.portal_id AND o.object_type = r.object_type
          AND o.object_id = r.object_id AND o.erased
    )
    ON CONFLICT (portal_id, object_type, object_id) DO UPDATE
    -- Asked again: fetch again, even if a fetch is under way or had given up.
    SET requested_at = now(),
        status = 'pending',
        attempts = CASE WHEN hydration_requests.status = 'dead' THEN 0
                        ELSE hydration_requests.attempts END,
        next_attempt_at = CASE WHEN hydration_requests.status = 'dead' THEN now()
                               ELSE hydration_requests.next_attempt_at END
    RETURNING 1
    )
    -- Wake the hydrate stage on commit (one notification per transaction, however many rows).
    SELECT pg_notify('{CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM asked)
    """
)


def request(connection: sa.Connection, wanted: Sequence[Wanted]) -> None:
    """Record that these records must be fetched (never an erased contact); the hydrate stage
    is notified when the transaction commits."""
    first: dict[ObjectKey, str] = {}
    for item in wanted:
        first.setdefault(item.key, item.reason)
    if not first:
        return
    rows = db.json_rows(
        {"portal_id": p, "object_type": t, "object_id": o, "reason": r}
        for (p, t, o), r in sorted(first.items())
    )
    connection.execute(_REQUEST, {"rows": rows})


_FORGET_CONTACTS = sa.text(
    """
    DELETE FROM hydration_requests h
    USING jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(portal_id bigint, object_id bigint)
    WHERE h.portal_id = r.portal_id AND h.object_type = 'contacts' AND h.object_id = r.object_id
    """
)


def forget_contacts(connection: sa.Connection, contacts: Iterable[tuple[int, int]]) -> None:
    """Drop pending fetches of erased contacts, (portal, contact id)."""
    rows = db.json_rows({"portal_id": p, "object_id": o} for p, o in sorted(set(contacts)))
    if rows != "[]":
        connection.execute(_FORGET_CONTACTS, {"rows": rows})


@dataclass(frozen=True, slots=True)
class Claim:
    """Up to 100 leased requests of one (portal, object type): one batch read, and the
    properties webhooks have mentioned for that type in that portal (`seen_properties`)."""

    portal_id: int
    object_type: str
    ids: list[int]
    claimed_at: datetime
    seen: tuple[str, ...] = ()


_CLAIM = sa.text(
    f"""
    WITH pick AS (
        SELECT portal_id, object_type FROM hydration_requests
        WHERE status = 'pending' AND next_attempt_at <= now()
          AND portal_id NOT IN (SELECT portal_id FROM portal_controls WHERE paused_at IS NOT NULL)
        ORDER BY next_attempt_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ),
    due AS (
        SELECT h.portal_id, h.object_type, h.object_id FROM hydration_requests h, pick
        WHERE h.portal_id = pick.portal_id AND h.object_type = pick.object_type
          AND h.status = 'pending' AND h.next_attempt_at <= now()
        ORDER BY h.next_attempt_at, h.object_id
        LIMIT :limit
        FOR UPDATE OF h SKIP LOCKED
    ),
    leased AS (
        UPDATE hydration_requests h
        SET next_attempt_at = now() + interval '{LEASE_SECONDS} seconds', attempts = h.attempts + 1
        FROM due
        WHERE h.portal_id = due.portal_id AND h.object_type = due.object_type
          AND h.object_id = due.object_id
        RETURNING h.portal_id, h.object_type, h.object_id
    )
    -- The properties to ask for come with the lease (read once: an uncorrelated subquery).
    -- A lease need not wait for the WAL flush: lost with a server crash, its rows are due again.
    SELECT leased.*, now() AS claimed_at,
           set_config('synchronous_commit', 'off', true) AS commit_mode,
           (SELECT coalesce(array_agg(s.property ORDER BY s.property), '{{}}')
            FROM seen_properties s, pick
            WHERE s.portal_id = pick.portal_id AND s.object_type = pick.object_type) AS seen
    FROM leased
    """
)


def claim(connection: sa.Connection) -> Claim | None:
    """Lease up to 100 due requests of one (portal, object type); paused portals wait."""
    claims = claim_reads(connection, 1)
    return claims[0] if claims else None


def claim_reads(connection: sa.Connection, reads: int) -> list[Claim]:
    """Lease up to `reads` batch reads' worth of due requests of one (portal, object type), as
    one Claim per read of up to 100; paused portals wait."""
    rows = connection.execute(_CLAIM, {"limit": BATCH_READ_LIMIT * reads}).all()
    if not rows:
        return []
    ids = sorted(r.object_id for r in rows)
    return [
        Claim(
            portal_id=rows[0].portal_id,
            object_type=rows[0].object_type,
            ids=ids[start : start + BATCH_READ_LIMIT],
            claimed_at=rows[0].claimed_at,
            seen=tuple(rows[0].seen),
        )
        for start in range(0, len(ids), BATCH_READ_LIMIT)
    ]


_COMPLETE = sa.text(
    """
    WITH done AS (
        DELETE FROM hydration_requests WHERE portal_id = :p AND object_type = :t
          AND object_id = ANY(:ids) AND requested_at <= :at
        RETURNING object_id
    )
    -- Asked again while we fetched: fetch again now rather than after the lease.
    UPDATE hydration_requests SET next_attempt_at = now(), attempts = 0
    WHERE portal_id = :p AND object_type = :t AND object_id = ANY(:ids)
      AND object_id NOT IN (SELECT object_id FROM done)
    """
)


def _params(claimed: Claim) -> dict[str, Any]:
    return {"p": claimed.portal_id, "t": claimed.object_type, "ids": claimed.ids}


def complete(connection: sa.Connection, claimed: Claim) -> None:
    """The records were fetched: drop the requests not asked for again since the claim, and
    make the others due now (one statement)."""
    connection.execute(_COMPLETE, {**_params(claimed), "at": claimed.claimed_at})


def release(connection: sa.Connection, claimed: Claim) -> None:
    """Give back a lease that was never fetched (a stage stopping): due now, attempt undone."""
    connection.execute(
        sa.text(
            "UPDATE hydration_requests SET next_attempt_at = now(),"
            " attempts = greatest(attempts - 1, 0)"
            " WHERE portal_id = :p AND object_type = :t AND object_id = ANY(:ids)"
            " AND status = 'pending'"
        ),
        _params(claimed),
    )


def fail(connection: sa.Connection, claimed: Claim, error: str, *, max_attempts: int) -> None:
    """Record the error; retry with backoff and jitter, or give up (dead) at the limit."""
    connection.execute(
        sa.text(
            """
            UPDATE hydration_requests
            SET last_error = :error,
                status = CASE WHEN attempts >= :max THEN 'dead' ELSE 'pending' END,
                next_attempt_at = now() + make_interval(
                    secs => least(3600, 10 * power(2, least(attempts, 20))) * (0.5 + random()))
            WHERE portal_id = :p AND object_type = :t AND object_id = ANY(:ids)
            """
        ),
        {
            "p": claimed.portal_id,
            "t": claimed.object_type,
            "ids": claimed.ids,
            "error": error[:2000],
            "max": max_attempts,
        },
    )


@dataclass(frozen=True, slots=True)
class Filters:
    """Which fetch requests an operator means."""

    status: str | None = None
    portal_id: int | None = None
    object_type: str | None = None
    object_id: int | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """A SQL condition and its parameters."""
        return db.where(
            equal={
                "status": self.status,
                "portal_id": self.portal_id,
                "object_type": self.object_type,
                "object_id": self.object_id,
            }
        )


def list_requests(connection: sa.Connection, filters: Filters, *, limit: int = 50) -> list[Any]:
    """Matching requests, pending first, soonest due first."""
    where, params = filters.where()
    return list(
        connection.execute(
            sa.text(
                f"SELECT * FROM hydration_requests WHERE {where}"
                " ORDER BY status, next_attempt_at LIMIT :limit"
            ),
            {**params, "limit": limit},
        )
    )


def page_requests(
    connection: sa.Connection,
    filters: Filters,
    *,
    after: ObjectKey | None = None,
    limit: int = 50,
) -> list[Any]:
    """Matching requests in key order; with `after`, the next page: the requests after that
    (portal, object type, object id) key (keyset pagination on the primary key)."""
    where, params = filters.where()
    if after is not None:
        where = (
            f"({where}) AND (portal_id, object_type, object_id) > (:after_p, :after_t, :after_o)"
        )
        params = {**params, "after_p": after[0], "after_t": after[1], "after_o": after[2]}
    return list(
        connection.execute(
            sa.text(
                f"SELECT * FROM hydration_requests WHERE {where}"
                " ORDER BY portal_id, object_type, object_id LIMIT :limit"
            ),
            {**params, "limit": limit},
        )
    )


def retry(connection: sa.Connection, filters: Filters) -> int:
    """Re-queue matching requests (dead ones included) for a fetch now; returns how many.
    The hydrate stage is woken when the transaction commits."""
    where, params = filters.where()
    count = int(
        connection.execute(
            sa.text(
                "UPDATE hydration_requests SET status = 'pending', attempts = 0,"
                f" next_attempt_at = now(), last_error = NULL WHERE {where}"
            ),
            params,
        ).rowcount
    )
    if count:
        wake(connection)
    return count


def wake(connection: sa.Connection) -> None:
    """Wake the hydrate stage when this transaction commits (NOTIFY is transactional)."""
    connection.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})
