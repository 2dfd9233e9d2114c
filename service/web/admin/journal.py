"""What the admin tree shows of the Webhooks Journal reader: cursors, recent entries, gaps.

Reads only, in the caller's connection (service/journal.py owns and writes the tables). The
cursors and gaps are a handful of rows; recent entries are read newest first through the index
on `fetched_at`, `limit` of them; a cursor's failed entries are counted over its journal's kept
entries (stored ones go after INBOX_RETENTION). A file's contents never leave the database
here: an entry shows its size, its event counts and whether the file is still kept. Errors are
shown by their first line with email addresses and phone numbers masked, as the other admin
pages do.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from service.web.admin.params import BadParameter
from service.web.admin.present import jsonable, mask_text

ENTRY_STATUSES = ("stored", "failed")
RECENT_GAPS = 20
REPLAY_HINT = "hubspot-webhooks journal replay --failed"

_CURSORS = sa.text(
    """
    SELECT c.journal, c.current_offset, c.entry_at, c.last_event_ms, c.latest_offset, c.behind,
           c.checked_at, c.errors, c.last_error, c.last_error_at, c.updated_at,
           extract(epoch FROM now() - c.entry_at) AS entry_age_seconds,
           (SELECT count(*) FROM journal_entries e
             WHERE e.journal = c.journal AND e.status = 'failed') AS failed_entries,
           (SELECT count(*) FROM journal_gaps g
             WHERE g.journal = c.journal AND g.reconciled_at IS NULL) AS open_gaps,
           (SELECT max(e.fetched_at) FROM journal_entries e
             WHERE e.journal = c.journal) AS last_file_at
    FROM journal_cursors c ORDER BY c.journal
    """
)
# Never `file`: its size and whether it is still kept only.
_ENTRIES = """
    SELECT journal, entry_offset, fetched_at, expires_at, file_bytes, events, stored, status,
           error, replayed_at, file IS NOT NULL AS file_kept
    FROM journal_entries {where} ORDER BY fetched_at DESC, entry_offset DESC LIMIT :limit
"""
_GAPS = sa.text(
    f"""
    SELECT id, journal, detected_at, reason, since_ms, until_ms, from_offset, to_offset,
           reconciled_at, reconcile_error, reconciled_at IS NULL AS open
    FROM (
        SELECT * FROM journal_gaps WHERE reconciled_at IS NULL
        UNION
        (SELECT * FROM journal_gaps ORDER BY id DESC LIMIT {RECENT_GAPS})
    ) g
    ORDER BY reconciled_at IS NULL DESC, id DESC
    """
)
_ANY = sa.text("SELECT EXISTS (SELECT FROM journal_cursors) OR EXISTS (SELECT FROM journal_gaps)")


def first_line(text: str | None) -> str | None:
    """An error's first line, emails and phone numbers masked (None stays None)."""
    if not text:
        return None
    return mask_text(text.strip().partition("\n")[0][:500])


def entry_filters(query: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(status, journal) from `?status=` and `?journal=`; BadParameter names a bad status."""
    status = query.get("status", "").strip() or None
    if status is not None and status not in ENTRY_STATUSES:
        raise BadParameter(f"status must be one of {', '.join(ENTRY_STATUSES)}, got {status!r}")
    return status, query.get("journal", "").strip() or None


def in_use(connection: sa.Connection) -> bool:
    """Whether a journal reader has left rows (a cursor or a gap): the nav shows the page."""
    return bool(connection.execute(_ANY).scalar_one())


def view(
    connection: sa.Connection, *, status: str | None, journal: str | None, limit: int
) -> dict[str, Any]:
    """Every cursor with its state, the `limit` newest entries (of `status`, of `journal`),
    the open gaps and the RECENT_GAPS latest others."""
    cursors = []
    for row in connection.execute(_CURSORS):
        cursor: dict[str, Any] = jsonable(row)
        cursor["last_error"] = first_line(row.last_error)
        cursor["state"] = _state(row)
        cursors.append(cursor)
    conditions: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        conditions.append("status = :status")
        params["status"] = status
    if journal is not None:
        conditions.append("journal = :journal")
        params["journal"] = journal
    where = "WHERE " + " AND ".join(conditions) if conditions else ""
    entries = []
    for row in connection.execute(sa.text(_ENTRIES.format(where=where)), params):
        entry: dict[str, Any] = jsonable(row)
        entry["error"] = first_line(row.error)
        entries.append(entry)
    gaps = []
    for row in connection.execute(_GAPS):
        gap: dict[str, Any] = jsonable(row)
        gap["reconcile_error"] = first_line(row.reconcile_error)
        gap |= {"since": _iso(row.since_ms), "until": _iso(row.until_ms)}
        gaps.append(gap)
    return {"cursors": cursors, "entries": entries, "gaps": gaps, "replay_hint": REPLAY_HINT}


def _iso(epoch_ms: int | None) -> str | None:
    """Epoch ms as ISO 8601 UTC, to the second (None stays None)."""
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="seconds")


def _state(row: Any) -> str:
    """One word for a cursor: gap (a missed window not reconciled), failing (its last error is
    newer than its last success: an entry stored, or a check that found it read to the end),
    failed_entries, behind, or ok."""
    if row.open_gaps:
        return "gap"
    successes = (row.entry_at, row.checked_at if row.behind == 0 else None)
    succeeded = max((t for t in successes if t is not None), default=None)
    if row.last_error_at is not None and (succeeded is None or row.last_error_at > succeeded):
        return "failing"
    if row.failed_entries:
        return "failed_entries"
    if row.behind:
        return "behind"
    return "ok"
