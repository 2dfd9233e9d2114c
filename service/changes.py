"""Changes already applied: every statement on applied_changes lives here.

With HUBSPOT_EVENT_SOURCE=both one CRM change arrives twice, as a webhook and as a journal event;
the inbox keeps both (their eventIds differ) and the mirror takes both harmlessly (last writer
wins), but rules and user handlers must run once per change. The apply stage names each applied
event's change (`events.change_key`) and calls `claim_first` in the batch's transaction: the first
inbox row to claim a change owns it for good, so an owner whose handler failed still owns its
change when it is retried, and every other copy is settled without firing.

The table is partitioned by day of occurredAt on the inbox's boundaries and kept as long as the
inbox (INBOX_RETENTION), nothing kept: a copy can only arrive while its original is still
stored, and an expired claim goes with the inbox rows it named.
"""

from __future__ import annotations

import sqlalchemy as sa

from service import db, partitions

__all__ = ["Keyed", "claim_first", "partitioning"]

# (portal, change key, occurredAt ms, inbox id): one applied event's change.
Keyed = tuple[int, int, int, int]

# One statement for the batch. Within the batch the first row of a change (in the caller's order)
# is the one inserted; rows are inserted in key order, so concurrent batches that share changes
# wait for each other in one order and cannot deadlock. The rows not inserted look their change
# up, one primary key probe each (LATERAL .. LIMIT 1: never a scan of the table), in the table as
# the statement's snapshot saw it, which holds every claim that can name one of these inbox rows
# (an earlier attempt of the same row, committed, or an earlier statement of this transaction).
# A claim of a concurrent transaction makes the INSERT wait for it; committed, it wins (our row is
# not inserted and the snapshot does not show the claim: not ours); rolled back, ours is inserted.
_CLAIM = sa.text(
    """
    WITH input AS (
        SELECT r.portal_id, r.change_key, r.occurred_at, r.inbox_id, r.n
        FROM jsonb_to_recordset(CAST(:rows AS jsonb))
             AS r(portal_id bigint, change_key bigint, occurred_at bigint, inbox_id bigint, n int)
    ), first AS (
        SELECT DISTINCT ON (portal_id, change_key, occurred_at)
               portal_id, change_key, occurred_at, inbox_id
        FROM input ORDER BY portal_id, change_key, occurred_at, n
    ), claimed AS (
        INSERT INTO applied_changes (portal_id, change_key, occurred_at, inbox_id)
        SELECT portal_id, change_key, occurred_at, inbox_id FROM first
        ORDER BY portal_id, change_key, occurred_at
        ON CONFLICT DO NOTHING
        RETURNING inbox_id
    ), rest AS MATERIALIZED (
        SELECT * FROM input WHERE inbox_id NOT IN (SELECT inbox_id FROM claimed)
    )
    SELECT inbox_id FROM claimed
    UNION ALL
    SELECT i.inbox_id FROM rest i
    CROSS JOIN LATERAL (
        SELECT a.inbox_id FROM applied_changes a
        WHERE a.portal_id = i.portal_id AND a.change_key = i.change_key
          AND a.occurred_at = i.occurred_at
        LIMIT 1
    ) owner
    WHERE owner.inbox_id = i.inbox_id
    """
)


def claim_first(connection: sa.Connection, keyed: list[Keyed]) -> set[int]:
    """Claim each event's change for its inbox row; returns the inbox ids that own theirs.

    An inbox row owns its change when it claims it first (the first of the list, among rows of
    one change in `keyed`) or claimed it before (a retry). A change a concurrent transaction is
    claiming waits for that transaction: committed, the change is its. One round trip.
    """
    if not keyed:
        return set()
    rows = db.json_rows(
        {"portal_id": p, "change_key": k, "occurred_at": o, "inbox_id": i, "n": n}
        for n, (p, k, o, i) in enumerate(keyed)
    )
    return set(connection.scalars(_CLAIM, {"rows": rows}))


def partitioning(
    retention_seconds: float, *, width_seconds: float = partitions.DAY_SECONDS
) -> partitions.Scheme:
    """How applied_changes is partitioned and kept: a day of occurredAt a partition, on the
    inbox's boundaries, three ready ahead, each dropped whole once older than the retention
    (INBOX_RETENTION: nothing is kept); in the default partition, once claimed longer ago too."""
    return partitions.daily(
        "applied_changes",
        "occurred_at",
        retention_seconds=retention_seconds,
        keep="false",
        # A claim dated outside every partition waits in the default as long as its inbox row.
        received="claimed_at",
        width_seconds=width_seconds,
    )
