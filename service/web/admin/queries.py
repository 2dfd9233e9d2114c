"""What the admin tree reads: overview numbers, portals, mirrored records, rule counts.

Reads only (writes go through each table's owner), in the caller's connection. The overview's
counts use the partial indexes of the rows not done and the received_at index, as the /metrics
gauges do, so they stay cheap on a large inbox; tokens are never selected.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from service import heartbeats, portals
from service.web.admin.present import jsonable

CHART_MINUTES = 60

_OPEN = "SELECT status, count(*) AS n FROM {table} WHERE status <> 'done' GROUP BY status"
_PER_MINUTE = sa.text(
    f"""
    SELECT floor(extract(epoch FROM now() - received_at) / 60)::int AS ago, count(*) AS n
    FROM inbox_events
    WHERE received_at > now() - interval '{CHART_MINUTES} minutes'
    GROUP BY 1
    """
)
_OLDEST_DUE = sa.text(
    """
    SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
    FROM inbox_events WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
    """
)
_HYDRATION = sa.text("SELECT status, count(*) AS n FROM hydration_requests GROUP BY status")
_REINSTALL = sa.text(
    "SELECT portal_id, last_error, updated_at FROM hubspot_tokens WHERE needs_reinstall"
    " ORDER BY portal_id"
)
_TOKENS = sa.text(
    "SELECT portal_id, scopes, expires_at, needs_reinstall, last_error, installed_at, updated_at"
    " FROM hubspot_tokens ORDER BY portal_id"
)
_LIMITS = sa.text(
    """
    WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
    SELECT r.portal_id, r.bucket, r.max_calls, r.window_ms,
           (SELECT count(*) FROM unnest(r.calls) AS t WHERE t > now.ms - r.window_ms) AS used,
           greatest(0, r.blocked_until_ms - now.ms) / 1000.0 AS blocked_seconds
    FROM rate_limits r, now ORDER BY r.portal_id, r.bucket
    """
)
_CALLS = sa.text(
    "SELECT portal_id, outcome, sum(calls) AS calls, max(last_at) AS last_at"
    " FROM hubspot_api_calls GROUP BY portal_id, outcome ORDER BY portal_id, outcome"
)
# 429s in the minutes begun within the last 5 (the /metrics window), on the minute index.
_RECENT_429S = sa.text(
    "SELECT portal_id, sum(calls) AS calls FROM hubspot_api_call_minutes"
    " WHERE minute > now() - interval '5 minutes' AND outcome = '429' GROUP BY portal_id"
)
_FIRED = sa.text("SELECT rule, status, count(*) AS n FROM action_runs GROUP BY rule, status")


def _open_counts(
    connection: sa.Connection, table: str, statuses: tuple[str, ...]
) -> dict[str, int]:
    counts = dict.fromkeys(statuses, 0)
    for row in connection.execute(sa.text(_OPEN.format(table=table))):
        counts[row.status] = int(row.n)
    return counts


def per_minute(connection: sa.Connection) -> list[int]:
    """Events received in each of the last 60 minutes, oldest first."""
    series = [0] * CHART_MINUTES
    for row in connection.execute(_PER_MINUTE):
        if 0 <= row.ago < CHART_MINUTES:
            series[CHART_MINUTES - 1 - row.ago] = int(row.n)
    return series


def overview(connection: sa.Connection) -> dict[str, Any]:
    """Queue depths, dead letters, events per minute, live workers, portals to re-install."""
    events = _open_counts(connection, "inbox_events", ("pending", "failed", "dead", "ignored"))
    runs = _open_counts(connection, "action_runs", ("pending", "failed", "dead"))
    hydration = {"pending": 0, "dead": 0}
    hydration |= {row.status: int(row.n) for row in connection.execute(_HYDRATION)}
    series = per_minute(connection)
    return {
        "queues": {"inbox": events, "actions": runs, "hydration": hydration},
        "dead_letters": {
            "inbox": events["dead"],
            "actions": runs["dead"],
            "hydration": hydration["dead"],
        },
        "oldest_due_seconds": float(connection.execute(_OLDEST_DUE).scalar_one()),
        "events_per_minute": series,
        "events_last_hour": sum(series),
        "live_workers": [
            jsonable(asdict(worker)) for worker in heartbeats.live_workers(connection)
        ],
        "portals_needing_reinstall": [jsonable(row) for row in connection.execute(_REINSTALL)],
    }


def portal_list(connection: sa.Connection) -> list[dict[str, Any]]:
    """Every portal with a token, a rate-limit budget, API calls, events waiting or a pause:
    token state (never the token), whether it needs a re-install, the budget used now, its calls
    by outcome, its 429s of the last five minutes, its backlog and whether it is paused."""
    found: dict[int, dict[str, Any]] = {}

    def portal(portal_id: int) -> dict[str, Any]:
        return found.setdefault(
            portal_id,
            {
                "portal_id": portal_id,
                "token": None,
                "needs_reinstall": False,
                "rate_limits": [],
                "api_calls": {},
                "recent_429s": 0,
                "paused": False,
                "paused_at": None,
                "pause_reason": None,
                "due_events": 0,
                "oldest_due_seconds": 0.0,
            },
        )

    for row in connection.execute(_TOKENS):
        entry = portal(row.portal_id)
        entry["token"] = jsonable({k: v for k, v in row._mapping.items() if k != "portal_id"})
        entry["needs_reinstall"] = bool(row.needs_reinstall)
    for row in connection.execute(_LIMITS):
        portal(row.portal_id)["rate_limits"].append(
            {
                "bucket": row.bucket,
                "used": int(row.used),
                "max_calls": int(row.max_calls),
                "window_seconds": row.window_ms / 1000,
                "blocked_seconds": float(row.blocked_seconds),
            }
        )
    for row in connection.execute(_CALLS):
        portal(row.portal_id)["api_calls"][row.outcome] = int(row.calls)
    for row in connection.execute(_RECENT_429S):
        portal(row.portal_id)["recent_429s"] = int(row.calls)
    for control in portals.paused(connection):
        portal(control.portal_id).update(
            paused=True, paused_at=jsonable(control.paused_at), pause_reason=control.reason
        )
    for portal_id, waiting in portals.backlogs(connection).items():
        portal(portal_id).update(
            due_events=waiting.due, oldest_due_seconds=round(waiting.oldest_due_seconds, 1)
        )
    return [found[p] for p in sorted(found)]


def record(
    connection: sa.Connection, portal_id: int, object_type: str, object_id: int
) -> dict[str, Any] | None:
    """A mirrored record: properties with their versions (occurredAt ms), flags, and its
    associations both ways; None when the mirror has no such record."""
    key = {"p": portal_id, "t": object_type, "o": object_id}
    row = connection.execute(
        sa.text(
            "SELECT * FROM crm_objects WHERE portal_id = :p AND object_type = :t AND object_id = :o"
        ),
        key,
    ).first()
    if row is None:
        return None
    found: dict[str, Any] = jsonable(row)
    found["properties"] = [
        {"name": name, "value": value, "version": row.versions.get(name)}
        for name, value in sorted(row.properties.items())
    ]
    del found["versions"]
    found["associations"] = [
        jsonable(a)
        for a in connection.execute(
            sa.text(
                "SELECT * FROM crm_associations WHERE portal_id = :p"
                " AND ((from_type = :t AND from_id = :o) OR (to_type = :t AND to_id = :o))"
                " ORDER BY from_type, from_id, to_type, to_id, association_type"
            ),
            key,
        )
    ]
    return found


def fired(connection: sa.Connection) -> dict[str, dict[str, int]]:
    """Action runs per rule and status: how often each rule fired, and how that went."""
    counts: dict[str, dict[str, int]] = {}
    for row in connection.execute(_FIRED):
        counts.setdefault(row.rule, {})[row.status] = int(row.n)
    return counts
