"""service.ops.journal as an operator runs it: `journal status` and `journal replay` in a
subprocess, on entries a journal reader stored from the fake Webhooks Journal."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from service import db, journal, journal_format
from service.hubspot import journal as stage
from service.hubspot.journal import JournalReader
from service.settings import Settings
from tests.factories import PORTAL
from tests.fake_hubspot import FakeHubSpot
from tests.fake_journal import FakeJournal
from tests.support import run_cli

START_MS = 1_767_225_600_000


def journal_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service journal ARGS` against the test database."""
    return run_cli("journal", *args, env={"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"})


@pytest.fixture
def reader(clean_db: str, fake: FakeHubSpot) -> Iterator[JournalReader]:
    """The journal reader of a worker in journal mode, on the fake."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": clean_db,
            "HUBSPOT_EVENT_SOURCE": "journal",
            "HUBSPOT_CLIENT_ID": fake.client_id,
            "HUBSPOT_CLIENT_SECRET": fake.client_secret,
            "HUBSPOT_API_BASE_URL": fake.url,
        }
    )
    found = stage.from_settings(settings, db.create_engine(clean_db, pool_size=2))
    assert found is not None
    yield found
    found.close()
    found.engine.dispose()


def entry(contact: int, at: int) -> list[dict[str, Any]]:
    """One entry's events: a contact created (2 push events), then changed (1)."""
    return [
        FakeJournal.event(
            "CREATE", PORTAL, "0-1", contact, occurred_at=at, properties={"firstname": "Ada"}
        ),
        FakeJournal.event(
            "UPDATE", PORTAL, "0-1", contact, occurred_at=at + 1, properties={"lastname": "K"}
        ),
    ]


def count(engine: sa.Engine, sql: str) -> int:
    """A count query's answer."""
    with engine.connect() as connection:
        return int(connection.scalar(sa.text(sql)) or 0)


def test_status_shows_the_offset_the_last_file_failures_gaps_and_errors(
    reader: JournalReader, clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    empty = journal_cli(clean_db, "status")
    assert empty.returncode == 0, empty.stderr
    assert "no journal read yet" in empty.stdout
    good = fake.journal.append(PORTAL, entry(901, START_MS))
    bad = fake.journal.append(PORTAL, entry(902, START_MS + 10))
    fake.journal.break_next_file(bad)
    assert reader.drain() == 2
    with engine.begin() as connection:
        journal.note_error(connection, "global", "HubSpotUnavailable: 503 from the journal")

    text = journal_cli(clean_db, "status")
    as_json = journal_cli(clean_db, "status", "--json")

    assert text.returncode == 0, text.stderr
    assert f"offset:        {bad}" in text.stdout
    assert "behind latest: 0 entries" in text.stdout
    assert f"last file:     {bad} failed" in text.stdout
    assert "entries kept:  1 stored, 1 failed" in text.stdout
    assert f"failed entry {bad}:" in text.stdout
    assert "errors:        1" in text.stdout
    assert "HubSpotUnavailable: 503" in text.stdout
    [row] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert row["journal"] == "global"
    assert (row["offset"], row["latest_offset"], row["behind"]) == (bad, bad, 0)
    assert (row["entries_stored"], row["entries_failed"], row["open_gaps"]) == (1, 1, 0)
    assert row["last_file"]["offset"] == bad
    assert row["last_file"]["status"] == "failed"
    assert row["errors"] == 1
    assert good != bad


def test_replay_stores_again_events_purged_from_the_inbox(
    reader: JournalReader, clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    offset = fake.journal.append(PORTAL, entry(901, START_MS))
    fake.journal.append(PORTAL, entry(902, START_MS + 10))
    reader.drain()
    total = count(engine, "SELECT count(*) FROM inbox_events")
    with engine.begin() as connection:  # as `purge` would, after the events were given up
        connection.execute(sa.text("DELETE FROM inbox_events WHERE object_id = 901"))

    replayed = journal_cli(clean_db, "replay", "--offset", offset)

    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 journal entries: 3 events stored, 0 events updated" in replayed.stdout
    assert count(engine, "SELECT count(*) FROM inbox_events") == total
    assert count(engine, "SELECT count(*) FROM journal_entries WHERE replayed_at IS NOT NULL") == 1
    again = journal_cli(clean_db, "replay", "--since", "1h")
    assert "replayed 2 journal entries: 0 events stored, 0 events updated" in again.stdout


def test_replay_applies_what_the_current_parser_makes_of_a_kept_file(
    reader: JournalReader, clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    # What an older parser left behind, through the tables' owners: an entry it refused (its
    # file kept, valid for the current parser) and events it stored with a payload the current
    # parser makes differently. No parser is patched: replay runs the one in the tree.
    offset = fake.journal.append(PORTAL, entry(901, START_MS))
    reader.drain()
    kept = json.dumps(entry(903, START_MS + 50)).encode()
    with engine.begin() as connection:
        journal.record_entry(
            connection,
            "global",
            "refused-by-an-old-parser",
            expires_at=None,
            file=journal_format.compress(kept),
            file_bytes=len(kept),
            events=0,
            stored=0,
            status="failed",
            error="event 0: unknown action CREATE",
            contacts=(),
        )
        connection.execute(
            sa.text(
                "UPDATE inbox_events SET status = 'done',"
                ' payload = payload || \'{"propertyName": "old"}\'::jsonb'
                " WHERE object_id = 901 AND payload->>'propertyName' = 'lastname'"
            )
        )

    failed = journal_cli(clean_db, "replay", "--failed")
    changed = journal_cli(clean_db, "replay", "--offset", offset)

    assert failed.returncode == 0, failed.stderr
    assert "replayed 1 journal entries: 3 events stored" in failed.stdout
    assert count(engine, "SELECT count(*) FROM inbox_events WHERE object_id = 903") == 3
    assert count(engine, "SELECT count(*) FROM journal_entries WHERE status = 'failed'") == 0
    assert "0 events stored, 1 events updated and due again" in changed.stdout
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT status, payload->>'propertyName' AS name FROM inbox_events"
                " WHERE object_id = 901 AND payload->>'propertyValue' = 'K'"
            )
        ).one()
    assert (row.status, row.name) == ("pending", "lastname")


def test_replay_of_a_file_that_still_fails_keeps_it_failed_and_exits_1(
    reader: JournalReader, clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    bad = fake.journal.append(PORTAL, entry(901, START_MS))
    fake.journal.break_next_file(bad)  # the file as downloaded is garbage, and so is the copy
    reader.drain()

    replayed = journal_cli(clean_db, "replay", "--failed")

    assert replayed.returncode == 1
    assert f"entry {bad} of global still fails" in replayed.stderr
    assert count(engine, "SELECT count(*) FROM journal_entries WHERE status = 'failed'") == 1
