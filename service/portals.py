"""Per-portal controls: every statement on portal_controls lives here.

An operator pauses a portal's processing (a bulk import to postpone, a rule misfiring, a portal
being uninstalled) and resumes it later. While a portal is paused its webhook events are still
stored and acknowledged (ingest never reads this table), but no stage works for it: the apply
stage's claim (`inbox.claim_due`), the act stage's (`outbox.claim`) and hydration's
(`fetches.claim`) skip its rows, and `reconcile.known_portals` leaves it out (the scheduled
reconcile, the pipeline refresh). Resuming picks up where it stopped; the caller wakes the stages
in the same transaction (`inbox.wake`, `outbox.wake`), as a replay does. `backlogs` reads what
each portal has waiting in the inbox, for operators.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

__all__ = [
    "MAX_REASON",
    "Backlog",
    "Control",
    "InvalidPortal",
    "backlogs",
    "check_portal",
    "list_controls",
    "pause",
    "paused",
    "resume",
]

log = logging.getLogger(__name__)

# An operator's note, shown on the admin page and in `portals list`; longer text is cut.
MAX_REASON = 500
_MAX_PORTAL = 2**63 - 1


class InvalidPortal(ValueError):
    """Not a portal id HubSpot issues: a positive integer that fits a bigint."""


@dataclass(frozen=True, slots=True)
class Control:
    """A portal's control row: paused since `paused_at` (None: running), with the reason."""

    portal_id: int
    paused_at: datetime | None
    reason: str | None
    updated_at: datetime

    @property
    def paused(self) -> bool:
        """Whether the portal's processing is paused."""
        return self.paused_at is not None


def check_portal(portal_id: int) -> int:
    """`portal_id` if HubSpot could have issued it (portal 0 is the service's own alerts)."""
    if not 1 <= portal_id <= _MAX_PORTAL:
        raise InvalidPortal(f"portal must be a positive integer below 2^63, not {portal_id}")
    return portal_id


_COLUMNS = "portal_id, paused_at, reason, updated_at"

# Pausing a paused portal keeps the time it was first paused; a new reason replaces the old one.
_PAUSE = sa.text(
    f"""
    INSERT INTO portal_controls AS c (portal_id, paused_at, reason)
    VALUES (:portal_id, now(), :reason)
    ON CONFLICT (portal_id) DO UPDATE
    SET paused_at = coalesce(c.paused_at, now()),
        reason = CASE WHEN c.paused_at IS NULL THEN EXCLUDED.reason
                      ELSE coalesce(EXCLUDED.reason, c.reason) END,
        updated_at = now()
    RETURNING {_COLUMNS}
    """
)
_RESUME = sa.text(
    f"""
    UPDATE portal_controls SET paused_at = NULL, reason = NULL, updated_at = now()
    WHERE portal_id = :portal_id AND paused_at IS NOT NULL
    RETURNING {_COLUMNS}
    """
)


def pause(connection: sa.Connection, portal_id: int, reason: str | None = None) -> Control:
    """Pause the portal's processing (again: keeps since when); returns its control row."""
    note = (reason or "").strip()[:MAX_REASON] or None
    row = connection.execute(_PAUSE, {"portal_id": check_portal(portal_id), "reason": note}).one()
    log.info("portal_paused", extra={"portal_id": portal_id})
    return Control(**row._mapping)


def resume(connection: sa.Connection, portal_id: int) -> bool:
    """Let the portal's rows be claimed again; False when it was not paused.

    The caller wakes the stages (`inbox.wake`, `outbox.wake`) in the same transaction.
    """
    row = connection.execute(_RESUME, {"portal_id": check_portal(portal_id)}).first()
    if row is not None:
        log.info("portal_resumed", extra={"portal_id": portal_id})
    return row is not None


def paused(connection: sa.Connection) -> list[Control]:
    """The paused portals, longest paused first."""
    return [
        Control(**row._mapping)
        for row in connection.execute(
            sa.text(
                f"SELECT {_COLUMNS} FROM portal_controls WHERE paused_at IS NOT NULL"
                " ORDER BY paused_at, portal_id"
            )
        )
    ]


def list_controls(connection: sa.Connection) -> list[Control]:
    """Every portal an operator has paused, now or before, by portal id."""
    return [
        Control(**row._mapping)
        for row in connection.execute(
            sa.text(f"SELECT {_COLUMNS} FROM portal_controls ORDER BY portal_id")
        )
    ]


@dataclass(frozen=True, slots=True)
class Backlog:
    """A portal's inbox rows still to apply: due now, due later (retries backing off), and how
    long the oldest due one has waited."""

    due: int
    later: int
    oldest_due_seconds: float


# An index-only scan of the open rows (ix_inbox_events_due_by_portal): the cost follows the
# backlog, not the inbox. For operators (CLI, admin), not for /metrics.
_BACKLOGS = sa.text(
    """
    SELECT portal_id,
           count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
           count(*) FILTER (WHERE next_attempt_at > now()) AS later,
           coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0) AS oldest
    FROM inbox_events WHERE status IN ('pending', 'failed')
    GROUP BY portal_id
    """
)


def backlogs(connection: sa.Connection) -> dict[int, Backlog]:
    """Each portal with inbox rows still to apply (pending, or failed and to be retried)."""
    return {
        row.portal_id: Backlog(int(row.due), int(row.later), max(0.0, float(row.oldest)))
        for row in connection.execute(_BACKLOGS)
    }
