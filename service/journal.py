"""The Webhooks Journal's bookkeeping: every statement on journal_cursors, journal_entries and
journal_gaps lives here.

A journal ("global", or "local:<portal>" for one portal's local journal) is read by one reader
at a time (service/hubspot/journal.py). Its cursor is the offset of the last entry whose events
are stored; `advance` moves it by compare-and-set in the transaction that stores the entry's
events (`record_entry`, `inbox.record_events`), so an entry is stored once whatever crashes or
races. The cursor also holds what the last check of the journal's latest entry found (`behind`:
how many entries after the cursor the reader saw then; 0 when it had read to the end) and the
last error. Each entry's file is kept gzip-compressed for `journal replay`: stored entries go
after INBOX_RETENTION (`purge_files`); failed ones stay, visible, until replayed. A gap is where
the journal moved past what the reader had read (an expired offset or file): its window is
reconciled from the CRM API and marked so (`gap_reconciled`).

Functions take a connection and never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

EntryStatus = Literal["stored", "failed"]
GAP_REASONS = ("offset_expired", "file_expired")
MAX_ERROR = 1000  # an error's text as stored (an exception's message; never a file's content)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a journal's reader got to, and what its last check and error said."""

    journal: str
    current_offset: str | None  # the last entry whose events are stored; None: none yet
    entry_at: datetime | None  # when that entry was stored
    last_event_ms: int | None  # the latest occurredAt stored from this journal, epoch ms
    latest_offset: str | None  # the journal's latest entry at the last check
    behind: int | None  # entries after the cursor seen at the last check (0: read to the end)
    checked_at: datetime | None
    errors: int
    last_error: str | None
    last_error_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Entry:
    """A journal entry read: its kept file (gzip; None once purged) and what storing it did."""

    journal: str
    entry_offset: str
    fetched_at: datetime
    expires_at: datetime | None
    file: bytes | None
    file_bytes: int
    events: int
    stored: int
    status: str
    error: str | None
    replayed_at: datetime | None
    contacts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Gap:
    """A window the journal no longer had when the reader got there."""

    id: int
    journal: str
    detected_at: datetime
    reason: str
    since_ms: int | None
    until_ms: int | None
    from_offset: str | None
    to_offset: str | None
    reconciled_at: datetime | None
    reconcile_error: str | None


@dataclass(frozen=True, slots=True)
class JournalStatus:
    """What operators look at for one journal (`journal status`, /metrics, the dashboard)."""

    cursor: Cursor
    last_entry: Entry | None  # the latest entry fetched (its file left out)
    entries_stored: int  # entries kept (stored ones go after INBOX_RETENTION)
    entries_failed: int
    open_gaps: int  # gaps not reconciled yet
    oldest_open_gap_at: datetime | None


# journal_entries.contacts of a file that cannot be read at all: any erasure drops it.
UNKNOWN_CONTACTS = "*"


def contact_keys(contacts: Iterable[tuple[int, int]] | None) -> list[str]:
    """(portal, contact id) pairs as journal_entries.contacts holds them: "portal:id"; None
    (whom the file mentions is unknown) as UNKNOWN_CONTACTS."""
    if contacts is None:
        return [UNKNOWN_CONTACTS]
    return sorted({f"{portal}:{contact}" for portal, contact in contacts})


# --- the cursor ----------------------------------------------------------------------------------

_ENSURE = sa.text(
    "INSERT INTO journal_cursors (journal) VALUES (:journal) ON CONFLICT (journal) DO NOTHING"
)


def cursor(connection: sa.Connection, journal: str) -> Cursor | None:
    """The journal's cursor, or None before its first read."""
    row = connection.execute(
        sa.text("SELECT * FROM journal_cursors WHERE journal = :journal"), {"journal": journal}
    ).first()
    return None if row is None else Cursor(**row._mapping)


# The WHERE re-checks after waiting for a concurrent mover's commit (READ COMMITTED re-reads the
# updated row), so of two transactions expecting the same offset exactly one moves it.
_ADVANCE = sa.text(
    """
    UPDATE journal_cursors
    SET current_offset = :offset, entry_at = now(), updated_at = now(),
        last_event_ms = CASE WHEN CAST(:last_event_ms AS bigint) IS NULL THEN last_event_ms
                             ELSE greatest(coalesce(last_event_ms, 0), :last_event_ms) END
    WHERE journal = :journal AND current_offset IS NOT DISTINCT FROM :expected
    """
)


def advance(
    connection: sa.Connection,
    journal: str,
    *,
    expected: str | None,
    offset: str,
    last_event_ms: int | None,
) -> bool:
    """Move the cursor from `expected` (None: not started) to `offset`, keeping the latest
    occurredAt stored; False when the cursor is elsewhere (another reader moved it)."""
    connection.execute(_ENSURE, {"journal": journal})
    params = {"journal": journal, "expected": expected, "offset": offset}
    return connection.execute(_ADVANCE, {**params, "last_event_ms": last_event_ms}).rowcount == 1


def note_latest(
    connection: sa.Connection, journal: str, *, latest_offset: str | None, behind: int | None
) -> None:
    """Record a check of the journal's latest entry and how many entries the reader saw after
    its cursor (0: it read to the end; None: not known)."""
    connection.execute(_ENSURE, {"journal": journal})
    connection.execute(
        sa.text(
            "UPDATE journal_cursors SET latest_offset = coalesce(:latest, latest_offset),"
            " behind = :behind, checked_at = now(), updated_at = now() WHERE journal = :journal"
        ),
        {"journal": journal, "latest": latest_offset, "behind": behind},
    )


def note_error(connection: sa.Connection, journal: str, error: str) -> None:
    """Count a failed round of the journal's reader, with what went wrong."""
    connection.execute(_ENSURE, {"journal": journal})
    connection.execute(
        sa.text(
            "UPDATE journal_cursors SET errors = errors + 1, last_error = :error,"
            " last_error_at = now(), updated_at = now() WHERE journal = :journal"
        ),
        {"journal": journal, "error": error[:MAX_ERROR]},
    )


# --- entries -------------------------------------------------------------------------------------

# An entry read again (the cursor restarted behind it) keeps the count of events it stored.
_RECORD_ENTRY = sa.text(
    """
    INSERT INTO journal_entries (journal, entry_offset, expires_at, file, file_bytes, events,
                                 stored, status, error, contacts)
    VALUES (:journal, :entry_offset, :expires_at, :file, :file_bytes, :events, :stored,
            :status, :error, :contacts)
    ON CONFLICT (journal, entry_offset) DO UPDATE
    SET fetched_at = now(), expires_at = EXCLUDED.expires_at, file = EXCLUDED.file,
        file_bytes = EXCLUDED.file_bytes, events = EXCLUDED.events,
        stored = journal_entries.stored + EXCLUDED.stored, status = EXCLUDED.status,
        error = EXCLUDED.error, contacts = EXCLUDED.contacts
    """
)


def record_entry(
    connection: sa.Connection,
    journal: str,
    entry_offset: str,
    *,
    expires_at: datetime | None,
    file: bytes | None,
    file_bytes: int,
    events: int,
    stored: int,
    status: EntryStatus,
    error: str | None,
    contacts: Iterable[tuple[int, int]] | None,
) -> None:
    """Keep an entry read: its file (gzip), the size downloaded, the events it held and how many
    were new, `stored` or `failed` (with the reason), the contacts it mentions (None: unknown,
    a file that cannot be read; any privacy erasure then drops it)."""
    connection.execute(
        _RECORD_ENTRY,
        {
            "journal": journal,
            "entry_offset": entry_offset,
            "expires_at": expires_at,
            "file": file,
            "file_bytes": file_bytes,
            "events": events,
            "stored": stored,
            "status": status,
            "error": None if error is None else error[:MAX_ERROR],
            "contacts": contact_keys(contacts),
        },
    )


def mark_replayed(
    connection: sa.Connection,
    journal: str,
    entry_offset: str,
    *,
    events: int,
    stored: int,
    contacts: Iterable[tuple[int, int]],
) -> None:
    """An entry's kept file was parsed again and its events stored: `stored`, replayed now."""
    connection.execute(
        sa.text(
            "UPDATE journal_entries SET status = 'stored', error = NULL, replayed_at = now(),"
            " events = :events, stored = stored + :stored, contacts = :contacts"
            " WHERE journal = :journal AND entry_offset = :entry_offset"
        ),
        {"journal": journal, "entry_offset": entry_offset, "events": events, "stored": stored}
        | {"contacts": contact_keys(contacts)},
    )


_ENTRY_COLUMNS = (
    "journal, entry_offset, fetched_at, expires_at, {file} AS file, file_bytes, events, stored,"
    " status, error, replayed_at, contacts"
)


def _entry(row: Any) -> Entry:
    values = dict(row._mapping)
    values["contacts"] = tuple(values["contacts"])
    if values["file"] is not None:
        values["file"] = bytes(values["file"])
    return Entry(**values)


def entries(
    connection: sa.Connection,
    journal: str | None = None,
    status: EntryStatus | None = None,
    limit: int = 100,
    *,
    offsets: Sequence[str] = (),
    since: datetime | None = None,
    with_files: bool = True,
) -> list[Entry]:
    """A journal's entries (every journal's with None), oldest fetched first: of a status, at
    the given offsets, fetched since a time; their files unless `with_files` is False."""
    conditions = ["true"]
    params: dict[str, Any] = {"limit": limit}
    for column, value in (("journal", journal), ("status", status)):
        if value is not None:
            conditions.append(f"{column} = :{column}")
            params[column] = value
    if offsets:
        conditions.append("entry_offset = ANY(:offsets)")
        params["offsets"] = list(offsets)
    if since is not None:
        conditions.append("fetched_at >= :since")
        params["since"] = since
    columns = _ENTRY_COLUMNS.format(file="file" if with_files else "NULL::bytea")
    rows = connection.execute(
        sa.text(
            f"SELECT {columns} FROM journal_entries WHERE {' AND '.join(conditions)}"
            " ORDER BY fetched_at, entry_offset LIMIT :limit"
        ),
        params,
    )
    return [_entry(r) for r in rows]


def purge_files(connection: sa.Connection, older_than: datetime, *, limit: int = 1000) -> int:
    """Drop up to `limit` stored entries (and their files) fetched before the time; failed
    entries stay until replayed. Returns how many went."""
    return connection.execute(
        sa.text(
            "DELETE FROM journal_entries e USING (SELECT journal, entry_offset"
            " FROM journal_entries WHERE fetched_at < :before AND status = 'stored'"
            " ORDER BY fetched_at LIMIT :limit FOR UPDATE SKIP LOCKED) d"
            " WHERE e.journal = d.journal AND e.entry_offset = d.entry_offset"
        ),
        {"before": older_than, "limit": limit},
    ).rowcount


def scrub_contacts(
    connection: sa.Connection,
    contacts: Iterable[tuple[int, int]],
    rewrite: Callable[[bytes, list[tuple[int, int]]], bytes | None],
) -> int:
    """Rewrite the kept files that mention erased contacts, (portal, contact id), with
    `rewrite(file, contacts)` (their values redacted; None: drop the file); how many.

    Found through the GIN index on `contacts`. Entries another transaction holds are skipped:
    the apply stage scrubs late files again when their events arrive (privacy.py)."""
    wanted = set(contacts)
    keys = contact_keys(wanted)
    if not keys:
        return 0
    rows = connection.execute(
        sa.text(
            "SELECT journal, entry_offset, file, contacts FROM journal_entries"
            " WHERE contacts && CAST(:keys AS text[]) AND file IS NOT NULL"
            " FOR UPDATE SKIP LOCKED"
        ),
        {"keys": [*keys, UNKNOWN_CONTACTS]},
    ).all()
    for row in rows:
        listed = set(row.contacts)
        mentioned = sorted(
            c for c in wanted if UNKNOWN_CONTACTS in listed or f"{c[0]}:{c[1]}" in listed
        )
        connection.execute(  # scrubbed: no longer listed, so not rewritten again
            sa.text(
                "UPDATE journal_entries SET file = :file, contacts = ARRAY(SELECT c FROM"
                " unnest(contacts) c WHERE c <> ALL(CAST(:keys AS text[])))"
                " WHERE journal = :journal AND entry_offset = :entry_offset"
            ),
            {"file": rewrite(bytes(row.file), mentioned), "keys": keys}
            | {"journal": row.journal, "entry_offset": row.entry_offset},
        )
    return len(rows)


# --- gaps ----------------------------------------------------------------------------------------


def record_gap(
    connection: sa.Connection,
    journal: str,
    *,
    reason: str,
    since_ms: int | None,
    until_ms: int | None,
    from_offset: str | None,
    to_offset: str | None,
) -> int:
    """Record a window the journal no longer had (`offset_expired`, `file_expired`): from the
    last occurredAt stored to when it was found; its id."""
    if reason not in GAP_REASONS:
        raise ValueError(f"a gap's reason is one of {GAP_REASONS}, not {reason!r}")
    statement = sa.text(
        "INSERT INTO journal_gaps (journal, reason, since_ms, until_ms, from_offset, to_offset)"
        " VALUES (:journal, :reason, :since_ms, :until_ms, :from_offset, :to_offset) RETURNING id"
    )
    params = {"journal": journal, "reason": reason, "since_ms": since_ms, "until_ms": until_ms}
    return int(
        connection.execute(
            statement, {**params, "from_offset": from_offset, "to_offset": to_offset}
        ).scalar_one()
    )


def open_gaps(connection: sa.Connection, journal: str | None = None) -> list[Gap]:
    """The gaps not reconciled yet (of one journal, or all), oldest first."""
    rows = connection.execute(
        sa.text(
            "SELECT * FROM journal_gaps WHERE reconciled_at IS NULL"
            " AND (CAST(:journal AS text) IS NULL OR journal = :journal) ORDER BY id"
        ),
        {"journal": journal},
    )
    return [Gap(**r._mapping) for r in rows]


def gap_reconciled(connection: sa.Connection, gap_id: int, *, error: str | None = None) -> None:
    """The gap's window was reconciled (error None), or the reconcile failed with `error` (the
    gap stays open and is tried again)."""
    connection.execute(
        sa.text(
            "UPDATE journal_gaps SET reconciled_at = CASE WHEN CAST(:error AS text) IS NULL"
            " THEN now() END, reconcile_error = :error WHERE id = :id"
        ),
        {"id": gap_id, "error": None if error is None else error[:MAX_ERROR]},
    )


# --- what operators see ------------------------------------------------------------------------

_STATUS_COUNTS = sa.text(
    """
    SELECT c.journal,
           (SELECT count(*) FROM journal_entries e
            WHERE e.journal = c.journal AND e.status = 'stored') AS entries_stored,
           (SELECT count(*) FROM journal_entries e
            WHERE e.journal = c.journal AND e.status = 'failed') AS entries_failed,
           (SELECT count(*) FROM journal_gaps g
            WHERE g.journal = c.journal AND g.reconciled_at IS NULL) AS open_gaps,
           (SELECT min(g.detected_at) FROM journal_gaps g
            WHERE g.journal = c.journal AND g.reconciled_at IS NULL) AS oldest_open_gap_at
    FROM journal_cursors c ORDER BY c.journal
    """
)


def status(connection: sa.Connection) -> list[JournalStatus]:
    """Every journal read so far: its cursor, latest entry, entry counts and open gaps."""
    cursors = {
        r.journal: Cursor(**r._mapping)
        for r in connection.execute(sa.text("SELECT * FROM journal_cursors"))
    }
    found = []
    for row in connection.execute(_STATUS_COUNTS):
        last = connection.execute(
            sa.text(
                f"SELECT {_ENTRY_COLUMNS.format(file='NULL::bytea')} FROM journal_entries"
                " WHERE journal = :journal ORDER BY fetched_at DESC, entry_offset DESC LIMIT 1"
            ),
            {"journal": row.journal},
        ).first()
        found.append(
            JournalStatus(
                cursor=cursors[row.journal],
                last_entry=None if last is None else _entry(last),
                entries_stored=int(row.entries_stored),
                entries_failed=int(row.entries_failed),
                open_gaps=int(row.open_gaps),
                oldest_open_gap_at=row.oldest_open_gap_at,
            )
        )
    return found
