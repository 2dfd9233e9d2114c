"""Privacy deletion: erase a contact everywhere and keep a tombstone.

`contact.privacyDeletion` empties the contact's mirrored properties, asks every table's owner to
scrub it (stored events, kept journal files, pending action payloads, pending fetches), and
leaves a tombstone (`erased`) so late events can never write personal data back, in whatever
order they come.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from service import db, fetches, inbox, journal, journal_format, outbox
from service.events import Event
from service.mirror.registers import erase


def erase_contacts(connection: sa.Connection, events: Sequence[Event]) -> None:
    """contact.privacyDeletion: erase, forget pending fetches, scrub stored events; a tombstone."""
    if not events:
        return
    latest: dict[tuple[int, int], int] = {}
    for e in events:
        assert e.object_id is not None
        key = (e.portal_id, e.object_id)
        latest[key] = max(latest.get(key, 0), e.occurred_at)
    rows = ({"portal_id": p, "object_id": o, "version": v} for (p, o), v in sorted(latest.items()))
    erase(connection, rows)
    # Each table's owner scrubs its own rows.
    fetches.forget_contacts(connection, latest)
    inbox.scrub_contacts(connection, latest)
    journal.scrub_contacts(connection, latest, _scrub_file)
    outbox.scrub_contacts(connection, latest)


_ERASED_AMONG = sa.text(
    """
    SELECT o.portal_id, o.object_id
    FROM crm_objects o
    JOIN jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(portal_id bigint, object_id bigint)
      ON o.portal_id = r.portal_id AND o.object_type = 'contacts' AND o.object_id = r.object_id
    WHERE o.erased
    """
)


def scrub_erased_events(connection: sa.Connection, events: Sequence[Event]) -> None:
    """Scrub late-arriving events about contacts that are already erased."""
    keys = {(e.portal_id, e.object_id) for e in events if e.object_id is not None}
    if not keys:
        return
    rows = db.json_rows({"portal_id": p, "object_id": o} for p, o in sorted(keys))
    erased = [(r.portal_id, r.object_id) for r in connection.execute(_ERASED_AMONG, {"rows": rows})]
    inbox.scrub_contacts(connection, erased)
    journal.scrub_contacts(connection, erased, _scrub_file)  # a journal file read since


def _scrub_file(data: bytes, contacts: list[tuple[int, int]]) -> bytes | None:
    """A kept journal file with those contacts' values redacted; None (the file goes) when it
    cannot be read, so cannot be scrubbed."""
    try:
        return journal_format.scrub_file(data, contacts)
    except journal_format.InvalidJournalFile:
        return None
