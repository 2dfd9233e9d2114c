"""The journal reader stage (service/hubspot/journal.py) against the fake Webhooks Journal:
every kind of event stored once with its cursor, one reader across readers, unparseable files
failed and visible, expired offsets and files recorded as gaps and reconciled, expired file
URLs renewed; then real `worker` processes: journal mode builds the mirror push mode builds
from the same history, and a worker killed mid-entry loses and doubles nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from service import db, journal, journal_format
from service.devtools import delivery
from service.hubspot import appauth
from service.hubspot import journal as stage
from service.hubspot.journal import JournalReader
from service.hubspot.journal_api import JournalApi
from service.settings import WEBHOOK_PATH, Settings
from service.worker import process
from service.worker.apply import Worker
from service.worker.upkeep import Alerts
from tests.factories import PORTAL, TOKEN, TOKEN_KEY
from tests.fake_hubspot import FakeHubSpot
from tests.fake_journal import FakeJournal
from tests.reliability.harness import Process
from tests.servers import serve_process

START_MS = 1_767_225_600_000  # 2026-01-01, well inside every partition scheme's range
Event = FakeJournal.event


def journal_settings(database_url: str, fake: FakeHubSpot, **env: str) -> Settings:
    """Journal mode on the fake: the app's client credentials, the private token for the CRM."""
    return Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "HUBSPOT_EVENT_SOURCE": "journal",
            "HUBSPOT_CLIENT_ID": fake.client_id,
            "HUBSPOT_CLIENT_SECRET": fake.client_secret,
            "HUBSPOT_ACCESS_TOKEN": TOKEN,
            "HUBSPOT_API_BASE_URL": fake.url,
            **env,
        }
    )


@pytest.fixture
def readers(clean_db: str, fake: FakeHubSpot) -> Iterator[list[JournalReader]]:
    """Readers made by `make_reader`, closed (their locks given up) after the test."""
    made: list[JournalReader] = []
    yield made
    for reader in made:
        reader.close()
        reader.engine.dispose()


def make_reader(
    readers: list[JournalReader], clean_db: str, fake: FakeHubSpot, **env: str
) -> JournalReader:
    """A reader on an engine of its own, as another worker process has."""
    settings = journal_settings(clean_db, fake, **env)
    reader = stage.from_settings(settings, db.create_engine(clean_db, pool_size=2))
    assert reader is not None
    readers.append(reader)
    return reader


def history(portal: int = PORTAL, start: int = START_MS) -> list[list[dict[str, Any]]]:
    """Entries holding every kind of change the mirror handles, of contacts, companies, deals
    and tickets: create, update, associate and dissociate, delete and restore, merge, and a
    privacy deletion."""
    t = iter(range(start, start + 1_000_000, 1000))
    return [
        [
            Event("CREATE", portal, "0-1", 900001, occurred_at=next(t),
                  properties={"email": "ada@example.com", "firstname": "Ada"}),
            Event("CREATE", portal, "0-2", 900101, occurred_at=next(t),
                  properties={"name": "Analytical Engines", "domain": "engines.example"}),
        ],
        [
            Event("CREATE", portal, "0-3", 900201, occurred_at=next(t),
                  properties={"dealname": "Difference engine", "amount": "1000"}),
            Event("CREATE", portal, "0-5", 900301, occurred_at=next(t),
                  properties={"subject": "Gears stuck", "hs_pipeline_stage": "1"}),
            Event("UPDATE", portal, "0-1", 900001, occurred_at=next(t),
                  properties={"firstname": "Augusta", "lastname": "King"}),
        ],
        [
            Event("ASSOCIATION_ADDED", portal, "0-1", 900001, occurred_at=next(t),
                  associated=("0-2", 900101), association_type_id=1),
            Event("ASSOCIATION_ADDED", portal, "0-3", 900201, occurred_at=next(t),
                  associated=("0-1", 900001), association_type_id=3),
            Event("ASSOCIATION_REMOVED", portal, "0-3", 900201, occurred_at=next(t),
                  associated=("0-1", 900001), association_type_id=3),
            Event("UPDATE", portal, "0-2", 900101, occurred_at=next(t),
                  properties={"name": "Analytical Engines Ltd"}),
        ],
        [
            Event("DELETE", portal, "0-3", 900201, occurred_at=next(t)),
            Event("RESTORE", portal, "0-3", 900201, occurred_at=next(t)),
            Event("UPDATE", portal, "0-5", 900301, occurred_at=next(t),
                  properties={"hs_pipeline_stage": "4"}),
            Event("CREATE", portal, "0-1", 900002, occurred_at=next(t),
                  properties={"email": "dup@example.com", "firstname": "Dup"}),
        ],
        [
            Event("MERGE", portal, "0-1", 900001, occurred_at=next(t),
                  primary_id=900001, merged_ids=[900002], new_id=900001),
            Event("CREATE", portal, "0-1", 900003, occurred_at=next(t),
                  properties={"email": "private@example.com", "firstname": "Private"}),
            Event("GDPR_DELETE", portal, "0-1", 900003, occurred_at=next(t)),
            Event("DELETE", portal, "0-2", 900101, occurred_at=next(t)),
        ],
    ]  # fmt: skip


def append_history(fake: FakeHubSpot, portal: int = PORTAL) -> list[str]:
    """Write `history` into the fake journal; the entries' offsets."""
    return [fake.journal.append(portal, events) for events in history(portal)]


def inbox_count(engine: sa.Engine) -> int:
    """How many events the inbox holds."""
    with engine.connect() as connection:
        return int(connection.scalar(sa.text("SELECT count(*) FROM inbox_events")) or 0)


def cursor_of(engine: sa.Engine, name: str = "global") -> journal.Cursor:
    """The journal's cursor (it must exist)."""
    with engine.connect() as connection:
        found = journal.cursor(connection, name)
    assert found is not None
    return found


def entries_of(engine: sa.Engine) -> list[journal.Entry]:
    """Every kept entry, oldest first."""
    with engine.connect() as connection:
        return journal.entries(connection, None, None, 1000)


def drain(reader: JournalReader) -> int:
    """Rounds until one stores nothing; how many entries were read."""
    return reader.drain()


def test_every_entry_is_stored_once_with_the_cursor(
    readers: list[JournalReader], clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    offsets = append_history(fake)
    reader = make_reader(readers, clean_db, fake)

    assert drain(reader) == len(offsets)
    stored = inbox_count(engine)
    assert reader.run_once() == 0  # at the end: nothing more
    cursor = cursor_of(engine)
    kept = entries_of(engine)

    assert cursor.current_offset == offsets[-1]
    assert cursor.behind == 0
    assert cursor.latest_offset == offsets[-1]
    assert [e.entry_offset for e in kept] == offsets
    assert {e.status for e in kept} == {"stored"}
    assert sum(e.stored for e in kept) == stored == sum(e.events for e in kept)
    assert all(e.file is not None and e.file[:2] == b"\x1f\x8b" for e in kept)
    assert ("62515:900003") in kept[-1].contacts
    with engine.connect() as connection:
        sources = set(connection.scalars(sa.text("SELECT signature_version FROM inbox_events")))
        types = set(connection.scalars(sa.text("SELECT subscription_type FROM inbox_events")))
    assert sources == {"journal"}
    assert {"contact.creation", "contact.merge", "contact.privacyDeletion"} <= types
    assert {"deal.deletion", "deal.restore", "contact.associationChange"} <= types

    # The journal read again from the start (a cursor lost): every event is a duplicate.
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM journal_cursors"))
    assert drain(reader) == len(offsets)
    assert inbox_count(engine) == stored


def test_one_reader_reads_however_many_workers_try(
    readers: list[JournalReader], clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    offsets = append_history(fake)
    first = make_reader(readers, clean_db, fake)
    second = make_reader(readers, clean_db, fake)

    assert first.run_once() == len(offsets)
    assert second.run_once() == 0  # the lock is the first one's
    fake.journal.append(PORTAL, history(start=START_MS + 10_000_000)[0])
    assert second.run_once() == 0
    assert first.run_once() == 1
    first.close()  # its process ends: the other takes over
    fake.journal.append(PORTAL, history(start=START_MS + 20_000_000)[0])
    assert second.run_once() == 1

    kept = entries_of(engine)
    assert len(kept) == len(offsets) + 2
    assert sum(e.events for e in kept) == inbox_count(engine)


def test_a_file_that_cannot_be_parsed_is_failed_and_passed_never_skipped_silently(
    readers: list[JournalReader],
    clean_db: str,
    fake: FakeHubSpot,
    engine: sa.Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    offsets = append_history(fake)
    fake.journal.break_next_file(offsets[1])
    reader = make_reader(readers, clean_db, fake)

    with caplog.at_level("ERROR", logger="service.hubspot.journal"):
        drain(reader)

    kept = {e.entry_offset: e for e in entries_of(engine)}
    assert kept[offsets[1]].status == "failed"
    assert kept[offsets[1]].error
    assert kept[offsets[1]].file is not None  # kept, for `journal replay`
    assert (kept[offsets[1]].events, kept[offsets[1]].stored) == (0, 0)
    assert all(kept[o].status == "stored" for o in offsets if o != offsets[1])
    assert cursor_of(engine).current_offset == offsets[-1]
    failures = [r for r in caplog.records if r.getMessage() == "journal_entry_failed"]
    assert [getattr(r, "offset", None) for r in failures] == [offsets[1]]
    with engine.connect() as connection:
        [status] = journal.status(connection)
    assert status.entries_failed == 1


def test_a_file_too_large_to_read_is_failed_and_the_reader_goes_on(
    readers: list[JournalReader], clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    offsets = append_history(fake)
    settings = journal_settings(clean_db, fake)
    app = appauth.from_settings(settings)
    assert app is not None
    own = db.create_engine(clean_db, pool_size=2)
    # Every file of the history is larger than 64 bytes.
    reader = JournalReader(own, JournalApi(app, max_file_bytes=64), settings)
    readers.append(reader)

    drain(reader)

    kept = entries_of(engine)
    assert {e.entry_offset for e in kept} == set(offsets)
    assert all(e.status == "failed" and "larger than 64 bytes" in (e.error or "") for e in kept)
    assert all(e.file is None for e in kept)
    assert cursor_of(engine).current_offset == offsets[-1]
    assert inbox_count(engine) == 0


def test_privacy_erasure_reaches_the_kept_files_of_failed_entries(
    readers: list[JournalReader],
    clean_db: str,
    fake: FakeHubSpot,
    engine: sa.Engine,
    worker: Worker,
) -> None:
    contact, at = 501, START_MS
    secret = "erase-me@example.com"
    named = Event("UPDATE", PORTAL, "0-1", contact, occurred_at=at, properties={"email": secret})
    del named["occurredAt"]  # refused by the parser, but JSON that still names its contact
    refused = fake.journal.append(PORTAL, [named])
    garbage = fake.journal.append(PORTAL, [Event("CREATE", PORTAL, "0-1", 502, occurred_at=at)])
    fake.journal.break_next_file(garbage)
    erase = Event("GDPR_DELETE", PORTAL, "0-1", contact, occurred_at=at + 1000)
    fake.journal.append(PORTAL, [erase])
    reader = make_reader(readers, clean_db, fake)

    drain(reader)
    kept = {e.entry_offset: e for e in entries_of(engine)}
    assert kept[refused].status == kept[garbage].status == "failed"
    assert list(kept[refused].contacts) == [f"{PORTAL}:{contact}"]
    assert list(kept[garbage].contacts) == [journal.UNKNOWN_CONTACTS]  # whom it names: unknown
    worker.drain()  # applies the privacy deletion

    kept = {e.entry_offset: e for e in entries_of(engine)}
    refused_file = kept[refused].file
    assert refused_file is not None
    assert secret.encode() not in journal_format.decompress(bytes(refused_file))
    assert kept[garbage].file is None  # unreadable: dropped rather than kept unscrubbed


def test_an_expired_file_url_is_renewed_once(
    readers: list[JournalReader], clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    offsets = append_history(fake)
    reader = make_reader(readers, clean_db, fake)
    fake.fail_next(1, 403, path_prefix="/journal-files")  # S3's answer to an expired URL

    assert drain(reader) == len(offsets)

    assert [e.status for e in entries_of(engine)] == ["stored"] * len(offsets)
    assert [c.status for c in fake.calls if c.path.endswith("/batch/read")] == [200]
    with engine.connect() as connection:
        assert journal.open_gaps(connection) == []


def test_an_entry_whose_url_has_expired_by_its_time_is_read_afresh_first(
    readers: list[JournalReader], clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    for events in history()[:3]:
        fake.journal.append(PORTAL, events)
    reader = make_reader(readers, clean_db, fake)
    fake.journal.url_ttl = 2.0
    fake.latency(1.2, path_prefix="/journal-files")  # downloads are slow: URLs run out
    # Entry 1 is fetched in time; entry 2's URL was valid when asked for and expired on the
    # way (403: renewed); by entry 3's turn its expiresAt has passed: renewed without a try.

    assert reader.run_once() == 3

    files = [c.status for c in fake.calls if c.path.startswith("/journal-files")]
    assert files == [200, 403, 200, 200]
    assert len([c for c in fake.calls if c.path.endswith("/batch/read")]) == 2


def test_a_file_gone_for_good_is_a_gap_and_the_reader_goes_on(
    readers: list[JournalReader], clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    offsets = append_history(fake)
    reader = make_reader(readers, clean_db, fake)
    assert reader.run_once() == len(offsets)
    lost = fake.journal.append(PORTAL, history(start=START_MS + 10_000_000)[0])
    after = fake.journal.append(PORTAL, history(start=START_MS + 20_000_000)[1])
    fake.fail_next(2, 403, path_prefix="/journal-files")  # the renewed URL fails too

    assert reader.run_once() == 2

    with engine.connect() as connection:
        gaps = connection.execute(sa.text("SELECT * FROM journal_gaps")).all()
    assert [(g.reason, g.from_offset, g.to_offset) for g in gaps] == [
        ("file_expired", offsets[-1], lost)
    ]
    assert cursor_of(engine).current_offset == after
    assert [e.entry_offset for e in entries_of(engine)][-1] == after


def test_an_expired_offset_is_a_gap_alerted_reconciled_and_read_from_the_earliest_entry(
    readers: list[JournalReader],
    clean_db: str,
    fake: FakeHubSpot,
    engine: sa.Engine,
    worker: Worker,
) -> None:
    settings = journal_settings(clean_db, fake)
    app = appauth.from_settings(settings)
    assert app is not None
    now = [1_000.0]
    own = db.create_engine(clean_db, pool_size=2)
    reader = JournalReader(own, JournalApi(app), settings, clock=lambda: now[0])
    readers.append(reader)
    offsets = append_history(fake)
    assert reader.run_once() == len(offsets)
    worker.drain()
    last_ms = cursor_of(engine).last_event_ms
    # The reader stops for days: entries it never read expire, and a record changes meanwhile.
    missed = [fake.journal.append(PORTAL, e) for e in history(start=START_MS + 10_000_000)[:2]]
    changed = fake.upsert(PORTAL, "contacts", None, {"email": "gap@example.com"})
    kept = fake.journal.append(PORTAL, history(start=START_MS + 20_000_000)[2])
    fake.journal.expire_before(missed[-1])
    fake.reset()
    fake.fail_next(1, 400, path_prefix="/crm")  # the first reconcile fails

    assert reader.run_once() == 1

    assert cursor_of(engine).current_offset == kept  # read on from the earliest entry
    with engine.connect() as connection:
        [gap] = journal.open_gaps(connection)
    assert (gap.reason, gap.from_offset, gap.since_ms) == ("offset_expired", offsets[-1], last_ms)
    assert gap.reconcile_error is not None
    [alert] = Alerts(engine, settings, conditions=("journal",)).evaluate()
    assert (alert.key, alert.kind, alert.value["gaps_open"]) == ("journal", "firing", 1)

    assert reader.run_once() == 0  # the reconcile is not retried at once...
    now[0] += stage.RECONCILE_RETRY_SECONDS
    assert reader.run_once() == 0  # ...but a while later

    with engine.connect() as connection:
        [done] = connection.execute(sa.text("SELECT * FROM journal_gaps")).all()
        mirrored = connection.execute(
            sa.text("SELECT * FROM hubspot_contacts WHERE portal_id = :p AND object_id = :o"),
            {"p": PORTAL, "o": int(changed)},
        ).first()
    assert done.reconciled_at is not None
    assert done.reconcile_error is None
    searched = {c.path.split("/")[-2] for c in fake.calls if c.path.endswith("/search")}
    assert {"contacts", "companies", "deals", "tickets"} <= searched
    assert mirrored is not None
    assert mirrored.email == "gap@example.com"
    [resolved] = Alerts(engine, settings, conditions=("journal",)).evaluate()
    assert resolved.kind == "resolved"


def test_a_first_run_can_start_after_the_latest_entry(
    readers: list[JournalReader], clean_db: str, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    offsets = append_history(fake)
    reader = make_reader(readers, clean_db, fake, JOURNAL_START="latest")

    assert reader.run_once() == 0
    assert cursor_of(engine).current_offset == offsets[-1]
    new = fake.journal.append(PORTAL, history(start=START_MS + 10_000_000)[0])
    assert reader.run_once() == 1
    assert [e.entry_offset for e in entries_of(engine)] == [new]


# --- real worker processes -------------------------------------------------------------------

WAIT_SECONDS = 60


def process_env(database_url: str, data_dir: Path, fake: FakeHubSpot, **env: str) -> dict[str, str]:
    """A `worker` (or `serve`) on `database_url` with the app's credentials on the fake: the
    same in push and journal mode (the client secret signs the push mode's webhooks)."""
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "HUBSPOT_CLIENT_ID": fake.client_id,
        "HUBSPOT_CLIENT_SECRET": fake.client_secret,
        "HUBSPOT_API_BASE_URL": fake.url,
        "TOKEN_ENCRYPTION_KEY": TOKEN_KEY,
        "WORKER_POLL_SECONDS": "0.2",
        "JOURNAL_POLL_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
        **env,
    }


def wait_for(what: str, done: Callable[[], bool], worker: Process) -> None:
    """Until `done()`, failing with the worker's output after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not done():
        assert worker.running, f"the worker exited:\n{worker.output()}"
        assert time.monotonic() < deadline, f"not {what} in time:\n{worker.output()}"
        time.sleep(0.1)


def settled(engine: sa.Engine, events: int) -> Callable[[], bool]:
    """Whether the inbox holds `events` events and none is waiting to be applied."""

    def check() -> bool:
        with engine.connect() as connection:
            stored, open_ = connection.execute(
                sa.text(
                    "SELECT count(*), count(*) FILTER (WHERE status IN ('pending', 'failed'))"
                    " FROM inbox_events"
                )
            ).one()
        return bool(stored == events and open_ == 0)

    return check


def push_events(fake: FakeHubSpot) -> list[list[dict[str, Any]]]:
    """Each journal entry's events as HubSpot's push webhooks carry them (no `journal` key)."""
    batches = []
    for kept in fake.journal.entries:
        parsed = journal_format.read_file(kept.file, entry_offset=kept.offset)
        batches.append([{k: v for k, v in e.items() if k != "journal"} for e in parsed.events])
    return batches


def mirror(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """The mirror's records and associations, and its views, without the times of writing."""
    queries = {
        "objects": "SELECT portal_id, object_type, object_id, properties, archived, merged_into,"
        " erased FROM crm_objects ORDER BY 1, 2, 3",
        "associations": "SELECT portal_id, from_type, from_id, to_type, to_id,"
        " association_type, present, is_primary FROM crm_associations ORDER BY 1, 2, 3, 4, 5, 6",
    }
    for view in ("hubspot_contacts", "hubspot_companies", "hubspot_deals", "hubspot_associations"):
        queries[view] = f"SELECT * FROM {view} ORDER BY 1, 2"
    when = {"first_seen", "updated_at"}  # when this database wrote the row: differs by run
    with engine.connect() as connection:
        return {
            name: [
                tuple(
                    json.dumps(v, sort_keys=True, default=str)
                    for k, v in row._mapping.items()
                    if k not in when
                )
                for row in connection.execute(sa.text(sql))
            ]
            for name, sql in queries.items()
        }


def test_journal_mode_builds_the_mirror_push_mode_builds_from_the_same_history(
    clean_db: str, engine: sa.Engine, own_engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    append_history(fake)
    batches = push_events(fake)
    total = sum(len(b) for b in batches)
    # Journal mode: no public URL, no web process; the worker reads the journal.
    env = process_env(clean_db, tmp_path / "data", fake, HUBSPOT_EVENT_SOURCE="journal")
    reader = Process(["worker"], env, tmp_path / "journal-worker.log")
    reader.start()
    try:
        wait_for("applied from the journal", settled(engine, total), reader)
    finally:
        reader.stop()
    # Push mode: the same events, signed, through the webhook of a real `serve`.
    env = process_env(own_engine.url.render_as_string(hide_password=False), tmp_path, fake)
    applier = Process(["worker"], env, tmp_path / "push-worker.log")
    with serve_process(env, tmp_path / "serve.log") as serving:
        url = serving.url + WEBHOOK_PATH
        for batch in batches:
            body = delivery.encode_batch(batch)
            headers = delivery.signed_headers(
                secret=fake.client_secret, url=url, body=body, timestamp_ms=int(time.time() * 1000)
            )
            assert httpx2.post(url, content=body, headers=headers, timeout=10).status_code == 200
        applier.start()
        try:
            wait_for("applied from the webhooks", settled(own_engine, total), applier)
        finally:
            applier.stop()

    journal_mirror, push_mirror = mirror(engine), mirror(own_engine)
    assert journal_mirror == push_mirror
    contacts = {row[2] for row in journal_mirror["objects"] if row[1] == '"contacts"'}
    assert contacts == {"900001", "900002", "900003"}
    assert len(journal_mirror["associations"]) == 2  # one added, one added and removed
    assert "Traceback" not in reader.output() + applier.output()


def test_a_worker_killed_between_download_and_commit_loses_and_doubles_nothing(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    offsets = append_history(fake)
    events = {
        kept.offset: len(journal_format.read_file(kept.file, entry_offset=kept.offset).events)
        for kept in fake.journal.entries
    }
    fake.latency(2.0, path_prefix="/journal-files")  # each download takes 2 s
    env = process_env(clean_db, tmp_path / "data", fake, HUBSPOT_EVENT_SOURCE="journal")
    worker = Process(["worker"], env, tmp_path / "worker.log")
    worker.start()
    try:
        wait_for("storing the first entry", lambda: len(entries_of(engine)) >= 1, worker)
        time.sleep(1.0)  # halfway through the second entry's download
        worker.kill()
        assert [e.entry_offset for e in entries_of(engine)] == offsets[:1]
        assert inbox_count(engine) == events[offsets[0]]
        assert cursor_of(engine).current_offset == offsets[0]
        fake.latency(0)
        worker.start()
        wait_for("settled", settled(engine, sum(events.values())), worker)
        wait_for("at the end", lambda: cursor_of(engine).current_offset == offsets[-1], worker)
    finally:
        worker.stop()

    kept = entries_of(engine)
    assert [e.entry_offset for e in kept] == offsets  # each entry stored once
    assert all(e.stored == e.events == events[e.entry_offset] for e in kept)  # no duplicates
    assert inbox_count(engine) == sum(events.values())
    with engine.connect() as connection:
        doubled = connection.scalar(
            sa.text(
                "SELECT count(*) FROM (SELECT event_id FROM inbox_events"
                " GROUP BY portal_id, event_id, object_id HAVING count(*) > 1) d"
            )
        )
    assert doubled == 0
    assert fake.journal.downloads >= len(offsets)  # the entry in flight was fetched again


def test_worker_drain_reads_the_journal_to_the_end_and_applies_it(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    offsets = append_history(fake)
    settings = journal_settings(clean_db, fake, DATA_DIR=str(tmp_path))

    drained = process.drain(settings)

    assert cursor_of(engine).current_offset == offsets[-1]
    assert drained.applied == inbox_count(engine) > 0
