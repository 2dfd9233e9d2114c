"""service.worker.apply, the apply stage: claiming, user handlers, failures, retries, dead letters
and waking up."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import db, inbox, portals
from service.events import Event, Kind
from service.rules.registry import Registry
from service.worker.apply import Worker
from tests.factories import PORTAL, change, hs
from tests.support import (
    Store,
    partitions_holding,
    partitions_read,
    statements_run,
    store_events,
)

LOG_TABLE = "test_handler_log"


# --- helpers ---------------------------------------------------------------------------------


def inbox_rows(engine: sa.Engine) -> list[Any]:
    """Every inbox row, oldest first, with the backoff still to wait in seconds."""
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT id, object_id, status, attempts, last_error, processed_at,"
                    " EXTRACT(EPOCH FROM next_attempt_at - now())::float AS wait_seconds"
                    " FROM inbox_events ORDER BY id"
                )
            )
        )


def statuses(engine: sa.Engine) -> dict[int, str]:
    """HubSpot object id -> inbox status (one event per object in these tests)."""
    return {r.object_id: r.status for r in inbox_rows(engine)}


def make_failed_due(engine: sa.Engine) -> None:
    """Skip the backoff: every failed row is due now (no NOTIFY, as a clock passing would do)."""
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE inbox_events SET next_attempt_at = now() WHERE status = 'failed'")
        )


def logged(engine: sa.Engine) -> dict[int, Any]:
    """What handlers wrote to the scratch table, by inbox id."""
    with engine.connect() as connection:
        return {
            r.inbox_id: r
            for r in connection.execute(sa.text(f"SELECT * FROM {LOG_TABLE} ORDER BY inbox_id"))
        }


def log_event(session: Session, event: Event, note: str | None = None) -> None:
    """A handler's write: one row in the scratch table, through the session it was given."""
    session.execute(
        sa.text(f"INSERT INTO {LOG_TABLE} (inbox_id, object_id, note) VALUES (:i, :o, :n)"),
        {"i": event.inbox_id, "o": event.object_id, "n": note},
    )


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Poll `condition` until it holds; returns the seconds it took, fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


def listening(engine: sa.Engine) -> bool:
    """Whether some session of this database is LISTENing for the ingest NOTIFY."""
    with engine.connect() as connection:
        return bool(
            connection.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query = :listen AND pid <> pg_backend_pid()"
                ),
                {"listen": f"LISTEN {inbox.INBOX_CHANNEL}"},
            )
        )


@pytest.fixture
def handler_log(clean_db: str, engine: sa.Engine) -> Iterator[str]:
    """A scratch table for handlers to write to (a user's own table), dropped afterwards."""
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {LOG_TABLE}"))
        connection.execute(
            sa.text(
                f"CREATE TABLE {LOG_TABLE} (inbox_id bigint PRIMARY KEY, object_id bigint,"
                " note text)"
            )
        )
    yield LOG_TABLE
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {LOG_TABLE}"))


Running = tuple[threading.Event, threading.Thread]


@pytest.fixture
def running() -> Iterator[Callable[[Worker], Running]]:
    """Start `Worker.run` in a thread (returns its stop event and thread); joined at the end."""
    started: list[Running] = []

    def start(worker: Worker) -> Running:
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), name="test-worker")
        thread.start()
        started.append((stop, thread))
        return stop, thread

    yield start
    for stop, thread in started:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


# --- user handlers ---------------------------------------------------------------------------


def test_user_handler_receives_the_normalised_event_and_a_session(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    received: list[tuple[Event, Session]] = []

    @worker.handlers.on("contacts", Kind.PROPERTY_CHANGE, prop="email")
    def on_email(event: Event, session: Session) -> None:
        received.append((event, session))

    store(
        [
            hs(
                "object.propertyChange",
                42,
                1000,
                objectTypeId="0-1",
                propertyName="email",
                propertyValue="ada@example.com",
            )
        ]
    )
    worker.drain()

    [(event, session)] = received
    [row] = inbox_rows(engine)
    assert isinstance(event, Event)
    assert isinstance(session, Session)
    assert (event.inbox_id, event.portal_id, event.object_type, event.object_id) == (
        row.id,
        PORTAL,
        "contacts",
        42,
    )
    assert event.kind is Kind.PROPERTY_CHANGE
    assert (event.property_name, event.property_value) == ("email", "ada@example.com")
    assert row.status == "done"


def test_user_handler_runs_after_the_mirror_and_reads_its_own_events_row(
    store: Store, worker: Worker
) -> None:
    seen: dict[int, str | None] = {}

    @worker.handlers.on("contacts", Kind.PROPERTY_CHANGE)
    def read_mirror(event: Event, session: Session) -> None:
        assert event.object_id is not None
        seen[event.object_id] = session.execute(
            sa.text(
                "SELECT properties->>'lifecyclestage' FROM crm_objects"
                " WHERE portal_id = :p AND object_type = 'contacts' AND object_id = :o"
            ),
            {"p": event.portal_id, "o": event.object_id},
        ).scalar()

    store(
        [
            change("contact", 1, 1000, "lifecyclestage", "lead"),
            change("contact", 2, 1000, "lifecyclestage", "customer"),
        ]
    )
    worker.drain()

    assert seen == {1: "lead", 2: "customer"}


def test_user_handler_writes_through_its_session_are_committed(
    store: Store, worker: Worker, engine: sa.Engine, handler_log: str
) -> None:
    @worker.handlers.on("*", Kind.CREATION)
    def remember(event: Event, session: Session) -> None:
        log_event(session, event, "created")

    store([hs("contact.creation", 1, 1000), hs("deal.creation", 2, 1000)])
    worker.drain()

    assert set(statuses(engine).values()) == {"done"}
    assert {r.object_id: r.note for r in logged(engine).values()} == {1: "created", 2: "created"}


def test_a_raising_handler_fails_its_event_only_and_its_writes_are_rolled_back(
    store: Store, worker: Worker, engine: sa.Engine, handler_log: str
) -> None:
    @worker.handlers.on("contacts", Kind.PROPERTY_CHANGE)
    def picky(event: Event, session: Session) -> None:
        log_event(session, event)
        if event.object_id == 2:
            raise ValueError("no owner for contact 2")

    store([change("contact", i, 1000, "email", f"c{i}@example.com") for i in (1, 2, 3)])
    worker.drain()

    rows = {r.object_id: r for r in inbox_rows(engine)}
    assert statuses(engine) == {1: "done", 2: "failed", 3: "done"}
    failed = rows[2]
    assert failed.attempts == 1
    assert failed.last_error is not None
    assert "ValueError: no owner for contact 2" in failed.last_error
    assert "Traceback" in failed.last_error
    assert failed.wait_seconds > 0
    assert failed.processed_at is None
    assert rows[1].last_error is None
    assert rows[1].processed_at is not None
    assert {r.object_id for r in logged(engine).values()} == {1, 3}


def test_a_failed_event_waits_its_backoff_before_it_is_claimed_again(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    calls: list[int] = []

    @worker.handlers.on("contacts", Kind.CREATION)
    def flaky(event: Event, session: Session) -> None:
        calls.append(event.inbox_id)
        raise RuntimeError("downstream unavailable")

    store([hs("contact.creation", 1, 1000)])
    worker.drain()
    assert worker.drain() == 0

    assert len(calls) == 1
    [row] = inbox_rows(engine)
    assert (row.status, row.attempts) == ("failed", 1)


def test_backoff_grows_exponentially_with_jitter(store: Store, engine: sa.Engine) -> None:
    handlers = Registry()

    @handlers.on("contacts", Kind.CREATION)
    def always_fails(event: Event, session: Session) -> None:
        raise RuntimeError("still broken")

    worker = Worker(engine, max_attempts=10, handlers=handlers)
    store([hs("contact.creation", i, 1000) for i in range(20)])

    worker.drain()
    first = [r.wait_seconds for r in inbox_rows(engine)]
    make_failed_due(engine)
    worker.drain()
    second = [r.wait_seconds for r in inbox_rows(engine)]

    assert {r.attempts for r in inbox_rows(engine)} == {2}
    # 5 s doubling per attempt, times 0.5-1.5 jitter: 2.5-7.5 s, then 5-15 s.
    assert all(2.0 < w <= 7.5 for w in first), first
    assert all(4.5 < w <= 15.0 for w in second), second
    assert sum(second) > sum(first)
    assert len({round(w, 3) for w in first}) > 1, "events that failed together retry together"


def test_after_max_attempts_an_event_is_dead_and_replay_after_a_fix_makes_it_done(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    broken = True

    @worker.handlers.on("deals", Kind.PROPERTY_CHANGE, prop="dealstage")
    def stage_changed(event: Event, session: Session) -> None:
        if broken:
            raise KeyError("pipeline 'sales' not configured")

    store([change("deal", 7, 1000, "dealstage", "closedwon")])
    seen: list[tuple[str, int]] = []
    for _ in range(worker.max_attempts):
        worker.drain()
        [row] = inbox_rows(engine)
        seen.append((row.status, row.attempts))
        make_failed_due(engine)

    assert seen == [("failed", 1), ("failed", 2), ("dead", 3)]
    [dead] = inbox_rows(engine)
    assert dead.last_error is not None
    assert "pipeline 'sales' not configured" in dead.last_error
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE inbox_events SET next_attempt_at = now()"))
    assert worker.drain() == 0, "a dead event is never retried by itself"

    broken = False
    with engine.begin() as connection:
        assert inbox.replay(connection, inbox.Filters(ids=(dead.id,))) == 1
    [queued] = inbox_rows(engine)
    assert (queued.status, queued.attempts, queued.last_error) == ("pending", 0, None)
    assert worker.drain() == 1

    [done] = inbox_rows(engine)
    assert (done.status, done.attempts, done.last_error) == ("done", 1, None)


# An event no handler knows, and the (object type, kind) a handler must register to take it.
UNHANDLED: dict[str, tuple[dict[str, Any], str, Kind]] = {
    "unmirrored-type": (hs("conversation.creation", 9, 1000), "conversations", Kind.CREATION),
    "unknown-kind": (hs("contact.someFutureEvent", 9, 1000), "contacts", Kind.OTHER),
    "unknown-object-type-id": (
        hs("object.creation", 9, 1000, objectTypeId="0-47"),
        "0-47",
        Kind.CREATION,
    ),
}


@pytest.mark.parametrize("case", UNHANDLED.values(), ids=UNHANDLED.keys())
def test_an_event_without_handler_is_ignored_and_replays_once_one_is_registered(
    store: Store, worker: Worker, engine: sa.Engine, case: tuple[dict[str, Any], str, Kind]
) -> None:
    raw, object_type, kind = case
    store([raw])
    worker.drain()

    [ignored] = inbox_rows(engine)
    assert (ignored.status, ignored.attempts, ignored.last_error) == ("ignored", 1, None)

    handled: list[Event] = []

    @worker.handlers.on(object_type, kind)
    def now_handled(event: Event, session: Session) -> None:
        handled.append(event)

    assert worker.drain() == 0, "ignored rows wait for a replay"
    with engine.begin() as connection:
        assert inbox.replay(connection, inbox.Filters(statuses=("ignored",))) == 1
    worker.drain()

    [done] = inbox_rows(engine)
    assert done.status == "done"
    assert [e.inbox_id for e in handled] == [ignored.id]


def test_mirrored_events_without_user_handlers_are_done(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([hs("contact.creation", 1, 1000), change("company", 2, 1000, "name", "Acme")])
    worker.drain()

    assert statuses(engine) == {1: "done", 2: "done"}


def test_a_batch_is_settled_in_the_partition_of_its_rows_not_in_every_partition(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    tomorrow = int(time.time() * 1000) + 86_400_000  # the next day's partition
    store([hs("contact.creation", n, tomorrow + n) for n in (1, 2, 3)])
    store([change("contact", 4, tomorrow + 4, "firstname", "Ada")])
    with statements_run(engine, "UPDATE inbox_events") as seen:
        assert worker.run_batch().claimed == 4
    [(statement, parameters)] = seen
    [partition] = partitions_holding(engine, [r.id for r in inbox_rows(engine)])

    read = partitions_read(engine, statement, parameters)

    assert statuses(engine) == {1: "done", 2: "done", 3: "done", 4: "done"}
    assert set(read) == {partition}


def test_a_batch_over_several_partitions_is_settled_in_each(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    now = int(time.time() * 1000)
    # Today (the old table), the day after tomorrow, and a date past every partition (default).
    store([hs("contact.creation", n, now + n * 86_400_000) for n in (0, 2, 40)])
    assert len(partitions_holding(engine, [r.id for r in inbox_rows(engine)])) == 3

    worker.drain()

    assert statuses(engine) == {0: "done", 2: "done", 40: "done"}


# --- a row that cannot be applied fails alone ------------------------------------------------


def test_a_stored_event_hubspot_cannot_have_sent_is_ignored_alone_with_the_reason(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([change("contact", i, 1000, "email", f"c{i}@example.com") for i in (1, 2, 3)])
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE inbox_events SET payload = payload - 'portalId' WHERE object_id = 2")
        )

    worker.drain()

    assert statuses(engine) == {1: "done", 2: "ignored", 3: "done"}
    ignored = next(r for r in inbox_rows(engine) if r.object_id == 2)
    assert ignored.last_error == "invalid event: missing required field portalId"
    assert worker.drain() == 0, "an invalid event is never retried"


def test_an_event_the_mirror_cannot_apply_fails_alone_and_the_rest_of_the_batch_applies(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([change("contact", i, 1000, "email", f"c{i}@example.com") for i in (1, 2, 3)])
    # A constraint the mirror's row for contact 2 breaks: the set-based statement for the batch
    # fails, so the worker falls back to one savepoint per event.
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "ALTER TABLE crm_objects ADD CONSTRAINT test_not_contact_2"
                " CHECK (object_id <> 2) NOT VALID"
            )
        )
    try:
        worker.drain()
    finally:
        with engine.begin() as connection:
            connection.execute(
                sa.text("ALTER TABLE crm_objects DROP CONSTRAINT test_not_contact_2")
            )

    assert statuses(engine) == {1: "done", 2: "failed", 3: "done"}
    with engine.connect() as connection:
        mirrored = connection.scalars(
            sa.text("SELECT object_id FROM crm_objects ORDER BY object_id")
        ).all()
    assert mirrored == [1, 3]


# --- events with junk property names (issue 10, finding 7) -----------------------------------

JUNK_NAMES: list[Any] = [-1, True, [], "[]", "Email", "x" * 101, "email'); --"]


def test_junk_property_names_are_ignored_with_the_reason_and_never_seen(
    clean_db: str, worker: Worker, engine: sa.Engine
) -> None:
    events = [
        hs("contact.propertyChange", 10 + n, 1000, propertyName=name, propertyValue="v")
        for n, name in enumerate(JUNK_NAMES)
    ]
    events.append(change("contact", 99, 1000, "hs_lead_status", "NEW"))
    assert store_events(clean_db, events) == len(events), "stored: acknowledged, not refused"

    worker.drain()

    rows = {r.object_id: r for r in inbox_rows(engine)}
    assert rows.pop(99).status == "done"
    for row in rows.values():
        assert row.status == "ignored"
        assert row.last_error.startswith("invalid event: propertyName ")
    assert worker.drain() == 0
    with engine.connect() as connection:
        seen = connection.execute(
            sa.text("SELECT object_type, property FROM seen_properties")
        ).all()
        mirrored = connection.scalars(sa.text("SELECT object_id FROM crm_objects")).all()
    # Hydration asks HubSpot for exactly these names: no junk can reach the API.
    assert [tuple(r) for r in seen] == [("contacts", "hs_lead_status")]
    assert mirrored == [99]


def test_a_generic_association_without_its_type_id_is_ignored_not_stored_as_none(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store(
        [
            hs(
                "object.associationChange",
                None,
                1000,
                fromObjectTypeId="0-3",
                toObjectTypeId="0-1",
                fromObjectId=8,
                toObjectId=123,
                associationCategory="HUBSPOT_DEFINED",
            )
        ]
    )

    worker.drain()

    [row] = inbox_rows(engine)
    assert (row.status, row.last_error) == (
        "ignored",
        "invalid event: associationChange without associationTypeId",
    )
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM crm_associations")) == 0


# --- claiming --------------------------------------------------------------------------------


def test_a_batch_claims_at_most_batch_size_rows(store: Store, engine: sa.Engine) -> None:
    worker = Worker(engine, batch_size=3, handlers=Registry())
    store([hs("contact.creation", i, 1000) for i in range(7)])

    report = worker.run_batch()

    assert (report.claimed, report.done, report.failed, report.ignored) == (3, 3, 0, 0)
    assert Counter(statuses(engine).values()) == {"done": 3, "pending": 4}
    assert worker.drain() == 4


def test_rows_another_transaction_holds_are_skipped_not_waited_for(
    store: Store, database_url: str
) -> None:
    # A statement timeout turns "waited for the lock" into an error instead of a hung test.
    engine = db.create_engine(database_url, pool_size=2, statement_timeout_ms=5000)
    calls: Counter[int] = Counter()
    handlers = Registry()

    @handlers.on("contacts", Kind.CREATION)
    def count(event: Event, session: Session) -> None:
        calls[event.inbox_id] += 1

    worker = Worker(engine, handlers=handlers)
    store([hs("contact.creation", i, 1000) for i in range(5)])
    try:
        with engine.connect() as other:
            held = {c.id for c in inbox.claim_due(other, 2)}
            assert worker.run_batch().claimed == 3
            other.rollback()
        assert worker.drain() == 2
    finally:
        engine.dispose()

    assert len(held) == 2
    assert set(calls.values()) == {1}
    assert len(calls) == 5


def test_two_workers_draining_concurrently_process_every_event_exactly_once(
    clean_db: str, engine: sa.Engine
) -> None:
    total = 2000
    # Few objects, many changes each: the workers' batches contend for the same mirror rows.
    events = [
        change("contact", i % 97, 1000 + i, "email" if i % 2 else "firstname", f"v{i}")
        for i in range(total)
    ]
    assert store_events(clean_db, events) == total

    lock = threading.Lock()
    calls: Counter[int] = Counter()
    by_worker: Counter[str] = Counter()
    shared = Registry()

    @shared.on("contacts", Kind.PROPERTY_CHANGE)
    def count(event: Event, session: Session) -> None:
        with lock:
            calls[event.inbox_id] += 1
            by_worker[threading.current_thread().name] += 1

    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            start.wait(5)
            Worker(engine, batch_size=50, handlers=shared).drain()
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=drain, name=f"worker-{n}") for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    rows = inbox_rows(engine)
    assert len(calls) == total
    assert set(calls.values()) == {1}, "an event was handled more than once"
    assert {(r.status, r.attempts) for r in rows} == {("done", 1)}
    assert set(by_worker) == {"worker-1", "worker-2"}, by_worker
    # And the mirror holds the newest value of each property, as one worker would leave it.
    latest: dict[tuple[int, str], str] = {}
    for e in events:
        latest[(e["objectId"], e["propertyName"])] = e["propertyValue"]
    with engine.connect() as connection:
        mirrored = {
            (r.object_id, name): value
            for r in connection.execute(sa.text("SELECT object_id, properties FROM crm_objects"))
            for name, value in r.properties.items()
        }
    assert mirrored == latest


# --- running: NOTIFY, polling, stopping ------------------------------------------------------


def test_a_running_worker_wakes_on_the_ingest_notify(
    store: Store, engine: sa.Engine, running: Callable[[Worker], Running]
) -> None:
    stop, thread = running(Worker(engine, poll_seconds=30, handlers=Registry()))
    wait_for(lambda: listening(engine), timeout=5)
    time.sleep(0.2)  # past its first (empty) batch: now only a NOTIFY can wake it early

    store([hs("contact.creation", 1, 1000)])
    took = wait_for(lambda: statuses(engine) == {1: "done"}, timeout=5)
    assert took < 2.0

    stopping = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - stopping < 2.0


def test_a_running_worker_stops_within_a_second_or_two_when_asked(
    clean_db: str, engine: sa.Engine, running: Callable[[Worker], Running]
) -> None:
    stop, thread = running(Worker(engine, poll_seconds=30, handlers=Registry()))
    wait_for(lambda: listening(engine), timeout=5)
    time.sleep(0.2)

    stopping = time.monotonic()
    stop.set()
    thread.join(5)

    assert not thread.is_alive()
    assert time.monotonic() - stopping < 2.0
    assert not listening(engine), "the LISTEN connection is closed on the way out"


def test_a_running_worker_polls_for_rows_that_became_due_without_a_notify(
    store: Store, engine: sa.Engine, running: Callable[[Worker], Running]
) -> None:
    store([hs("contact.creation", 1, 1000)])
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE inbox_events SET next_attempt_at = now() + interval '1 hour'")
        )
    running(Worker(engine, poll_seconds=0.3, handlers=Registry()))
    wait_for(lambda: listening(engine), timeout=5)
    time.sleep(0.5)
    assert statuses(engine) == {1: "pending"}

    # Due now, as a retry's backoff running out would make it: no NOTIFY is sent for that.
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE inbox_events SET next_attempt_at = now()"))

    wait_for(lambda: statuses(engine) == {1: "done"}, timeout=3)


def test_a_paused_portal_waits_and_resuming_wakes_the_worker_to_drain_it(
    store: Store, engine: sa.Engine, running: Callable[[Worker], Running]
) -> None:
    paused_portal = 4242
    with engine.begin() as connection:
        portals.pause(connection, paused_portal, "bulk import")
    running(Worker(engine, poll_seconds=30, handlers=Registry()))
    wait_for(lambda: listening(engine), timeout=5)
    store([hs("contact.creation", i, 1000, portalId=paused_portal) for i in (1, 2, 3)])
    store([hs("contact.creation", 9, 1000)])
    wait_for(lambda: statuses(engine)[9] == "done", timeout=5)
    time.sleep(0.3)  # the paused portal's rows were stored and acknowledged, not applied
    assert statuses(engine) == {1: "pending", 2: "pending", 3: "pending", 9: "done"}

    with engine.begin() as connection:
        assert portals.resume(connection, paused_portal)
        inbox.wake(connection)

    # Polling is 30 s away: only the NOTIFY of the resume can wake the worker this soon.
    took = wait_for(lambda: set(statuses(engine).values()) == {"done"}, timeout=5)
    assert took < 2.0


def test_stop_during_a_batch_lets_the_batch_finish(
    store: Store, engine: sa.Engine, running: Callable[[Worker], Running]
) -> None:
    entered, release = threading.Event(), threading.Event()
    handlers = Registry()

    @handlers.on("contacts", Kind.CREATION)
    def slow(event: Event, session: Session) -> None:
        entered.set()
        assert release.wait(5)

    stop, thread = running(Worker(engine, poll_seconds=30, handlers=handlers))
    store([hs("contact.creation", i, 1000) for i in (1, 2, 3)])
    assert entered.wait(5)

    stop.set()
    release.set()
    thread.join(5)

    assert not thread.is_alive()
    assert statuses(engine) == {1: "done", 2: "done", 3: "done"}
