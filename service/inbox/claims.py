"""The apply stage's side of the inbox: claim due rows fairly across portals, settle them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple, cast

import orjson
import sqlalchemy as sa

from service import db

# --- the worker's side: claim due rows, settle them ------------------------------------------

# Backoff after a failed attempt n (1-based): 5 s doubling to at most an hour, times 0.5-1.5
# jitter so events that failed together do not all retry in the same instant.
_BACKOFF_SQL = "least(3600, 5 * power(2, least(i.attempts, 20))) * (0.5 + random())"


# A row is named by (id, occurred_at): id has an index per partition, so a statement by id alone
# probes them all; with occurred_at, the partition key, pruning leaves one per row (see _SETTLE).
# Named tuples, not frozen dataclasses: one of each is made per row per batch, and a frozen
# dataclass's __init__ costs several times a tuple's (bench/README.md, issue 13).
class Claimed(NamedTuple):
    """A due inbox row, locked by the claiming transaction."""

    id: int
    occurred_at: int
    payload: dict[str, Any]


class Outcome(NamedTuple):
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
    SELECT id, occurred_at, CAST(payload AS text) AS payload FROM (
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
    rows = connection.execute(_CLAIM, {"limit": limit}).all()  # one fetch, not one per row
    return [Claimed(id_, occurred_at, _decode(text)) for id_, occurred_at, text in rows]


def _decode(text: str) -> dict[str, Any]:
    """A stored payload as json.loads reads it, by orjson (several times faster) where that is
    exact: orjson reads an integer too wide for 64 bits as a float, so a payload with any float
    in it (rare: HubSpot sends none) is read again by json."""
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:  # a number beyond a double, say: json reads it
        return cast(dict[str, Any], json.loads(text))
    if not isinstance(payload, dict) or _has_float(payload.values()):
        return cast(dict[str, Any], json.loads(text))
    return payload


def _has_float(values: Iterable[object]) -> bool:
    for value in values:
        kind = type(value)
        if kind is float:
            return True
        if kind is dict and _has_float(cast(dict[str, object], value).values()):
            return True
        if kind is list and _has_float(cast(list[object], value)):
            return True
    return False


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
    params = {"rows": db.json_rows(rows), "low": min(stamps), "high": max(stamps)}
    connection.execute(_SETTLE, {**params, "max_attempts": max_attempts})
