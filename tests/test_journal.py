"""service.journal: the journal reader's cursor (compare-and-set), entries, gaps and what
operators see; inbox.record_events and inbox.replay_payloads, the journal's side of the inbox."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from service import db, inbox, journal
from tests.factories import PORTAL

JOURNAL = "global"


def _event(event_id: int, value: str = "a", *, occurred_at: int = 1_700_000_000_000) -> Any:
    return {
        "eventId": event_id,
        "subscriptionId": 0,
        "portalId": PORTAL,
        "occurredAt": occurred_at,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": 101,
        "propertyName": "firstname",
        "propertyValue": value,
    }


def test_the_cursor_moves_only_from_where_the_caller_found_it(
    clean_db: str, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        assert journal.cursor(connection, JOURNAL) is None
        assert journal.advance(connection, JOURNAL, expected=None, offset="a", last_event_ms=5)
        assert not journal.advance(connection, JOURNAL, expected=None, offset="b", last_event_ms=9)
        assert journal.advance(connection, JOURNAL, expected="a", offset="b", last_event_ms=3)
        found = journal.cursor(connection, JOURNAL)

    assert found is not None
    assert (found.current_offset, found.last_event_ms) == ("b", 5)  # the latest occurredAt kept


def test_a_reader_expecting_an_offset_another_moved_from_does_not_move_it(
    clean_db: str, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        journal.advance(connection, JOURNAL, expected=None, offset="a", last_event_ms=None)
    first, second = engine.connect(), engine.connect()
    try:
        first.begin()
        second.begin()
        assert journal.advance(first, JOURNAL, expected="a", offset="b", last_event_ms=None)
        first.commit()  # the other reader's entry is stored: `second` finds the cursor moved
        assert not journal.advance(second, JOURNAL, expected="a", offset="c", last_event_ms=None)
        second.rollback()
    finally:
        first.close()
        second.close()
    with engine.connect() as connection:
        found = journal.cursor(connection, JOURNAL)
    assert found is not None
    assert found.current_offset == "b"


def test_entries_gaps_and_errors_show_in_status(clean_db: str, engine: sa.Engine) -> None:
    with engine.begin() as connection:
        journal.advance(connection, JOURNAL, expected=None, offset="e1", last_event_ms=10)
        journal.record_entry(
            connection,
            JOURNAL,
            "e1",
            expires_at=None,
            file=b"gz",
            file_bytes=2,
            events=3,
            stored=2,
            status="stored",
            error=None,
            contacts=[(PORTAL, 101)],
        )
        journal.record_entry(
            connection,
            JOURNAL,
            "e2",
            expires_at=None,
            file=b"bad",
            file_bytes=3,
            events=0,
            stored=0,
            status="failed",
            error="event 0: no portalId",
            contacts=(),
        )
        gap = journal.record_gap(
            connection,
            JOURNAL,
            reason="offset_expired",
            since_ms=10,
            until_ms=20,
            from_offset="e0",
            to_offset=None,
        )
        journal.note_latest(connection, JOURNAL, latest_offset="e9", behind=7)
        journal.note_error(connection, JOURNAL, "HubSpotUnavailable: 503")
        [found] = journal.status(connection)
        failed = journal.entries(connection, JOURNAL, "failed")

    assert found.cursor.current_offset == "e1"
    assert (found.cursor.latest_offset, found.cursor.behind) == ("e9", 7)
    assert (found.cursor.errors, found.cursor.last_error) == (1, "HubSpotUnavailable: 503")
    assert (found.entries_stored, found.entries_failed, found.open_gaps) == (1, 1, 1)
    assert found.last_entry is not None
    assert found.last_entry.entry_offset == "e2"
    assert found.last_entry.file is None  # status never carries files
    assert [(e.entry_offset, e.error, e.file) for e in failed] == [
        ("e2", "event 0: no portalId", b"bad")
    ]

    with engine.begin() as connection:
        journal.gap_reconciled(connection, gap, error="HubSpotUnavailable")
        assert [g.reconcile_error for g in journal.open_gaps(connection)] == ["HubSpotUnavailable"]
        journal.gap_reconciled(connection, gap)
        assert journal.open_gaps(connection) == []


def test_purge_drops_old_stored_entries_and_keeps_failed_ones(
    clean_db: str, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        for offset, status in (("old", "stored"), ("bad", "failed"), ("new", "stored")):
            journal.record_entry(
                connection,
                JOURNAL,
                offset,
                expires_at=None,
                file=b"f",
                file_bytes=1,
                events=0,
                stored=0,
                status="stored" if status == "stored" else "failed",
                error=None,
                contacts=(),
            )
        connection.execute(
            sa.text(
                "UPDATE journal_entries SET fetched_at = now() - interval '8 days'"
                " WHERE entry_offset IN ('old', 'bad')"
            )
        )
        purged = journal.purge_files(connection, db.utcnow() - timedelta(days=7))
        left = [e.entry_offset for e in journal.entries(connection, JOURNAL)]

    assert purged == 1
    assert sorted(left) == ["bad", "new"]


def test_scrub_rewrites_only_files_that_mention_the_contact(
    clean_db: str, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        for offset, contacts in (("x", [(PORTAL, 101)]), ("y", [(PORTAL, 102)])):
            journal.record_entry(
                connection,
                JOURNAL,
                offset,
                expires_at=None,
                file=offset.encode(),
                file_bytes=1,
                events=1,
                stored=1,
                status="stored",
                error=None,
                contacts=contacts,
            )
        seen: list[tuple[bytes, list[tuple[int, int]]]] = []

        def rewrite(data: bytes, contacts: list[tuple[int, int]]) -> bytes:
            seen.append((data, contacts))
            return b"scrubbed"

        assert journal.scrub_contacts(connection, [(PORTAL, 101)], rewrite) == 1
        assert journal.scrub_contacts(connection, [(PORTAL, 101)], rewrite) == 0  # done once
        files = {e.entry_offset: e.file for e in journal.entries(connection, JOURNAL)}

    assert seen == [(b"x", [(PORTAL, 101)])]
    assert files == {"x": b"scrubbed", "y": b"y"}


def test_record_events_stores_new_events_once_in_the_callers_transaction(
    clean_db: str, engine: sa.Engine
) -> None:
    text = json.dumps([_event(1), _event(2), _event(1)])
    with engine.connect() as connection:
        connection.begin()
        first = inbox.record_events(connection, text, source=inbox.JOURNAL_SOURCE)
        connection.rollback()  # nothing stays: the caller owns the transaction
    with engine.begin() as connection:
        again = inbox.record_events(connection, text, source=inbox.JOURNAL_SOURCE)
        twice = inbox.record_events(connection, text, source=inbox.JOURNAL_SOURCE)
        sources = connection.scalars(sa.text("SELECT signature_version FROM inbox_events")).all()

    assert (first.received, first.stored) == (3, 2)
    assert (again.stored, again.duplicates) == (2, 1)
    assert (twice.stored, twice.duplicates) == (0, 3)
    assert sources == ["journal", "journal"]


def test_replay_payloads_updates_changed_events_and_makes_them_due(
    clean_db: str, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        inbox.record_events(
            connection, json.dumps([_event(1), _event(2)]), source=inbox.JOURNAL_SOURCE
        )
        connection.execute(sa.text("UPDATE inbox_events SET status = 'done', attempts = 1"))
        changed = inbox.replay_payloads(connection, json.dumps([_event(1, "b"), _event(2)]))
        rows = connection.execute(
            sa.text(
                "SELECT event_id, status, attempts, payload->>'propertyValue' AS value"
                " FROM inbox_events ORDER BY event_id"
            )
        ).all()

    assert changed == 1
    assert [tuple(r) for r in rows] == [(1, "pending", 0, "b"), (2, "done", 1, "a")]
