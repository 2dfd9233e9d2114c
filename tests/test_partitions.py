"""service.partitions on the inbox (and on a timestamptz table): partitions created ahead, rows
outside them stored in the default, expired partitions dropped with their done and ignored rows
while pending, failed and dead rows stay claimable and replayable; one runner at a time; a busy
table delays the upkeep, never ingest. Each test has a migrated database of its own, and moves
time with `now_ms` instead of waiting.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from service import inbox, partitions
from service.rules.registry import Registry
from service.web.app import create_app
from service.worker.apply import Worker
from tests.factories import numbered_event
from tests.support import make_settings, post_events, store_events

HOUR = 3_600_000
DAY = 24 * HOUR
# An hour a partition and two hours of retention: a day's worth of upkeep in a few statements.
HOURLY = inbox.partitioning(2 * 3600, width_seconds=3600)


def now_ms() -> int:
    return int(time.time() * 1000)


def layout(engine: sa.Engine) -> list[tuple[str, int | None, int | None]]:
    with engine.connect() as connection:
        return [(p.name, p.lower, p.upper) for p in partitions.attached(connection, HOURLY)]


def rows(engine: sa.Engine) -> dict[int, tuple[str, str]]:
    """event_id -> (status, the partition holding the row)."""
    with engine.connect() as connection:
        return {
            r.event_id: (r.status, r.partition)
            for r in connection.execute(
                sa.text(
                    "SELECT event_id, status, tableoid::regclass::text AS partition"
                    " FROM inbox_events"
                )
            )
        }


def ids_by_event(connection: sa.Connection) -> dict[int, int]:
    """event_id -> inbox id."""
    return {
        r.event_id: r.id
        for r in connection.execute(sa.text("SELECT event_id, id FROM inbox_events"))
    }


def set_status(engine: sa.Engine, statuses: dict[int, str]) -> None:
    with engine.begin() as connection:
        for event_id, status in statuses.items():
            connection.execute(
                sa.text("UPDATE inbox_events SET status = :s WHERE event_id = :e"),
                {"s": status, "e": event_id},
            )


def event_at(event_id: int, occurred_at: int, **fields: Any) -> dict[str, Any]:
    return numbered_event(event_id, occurredAt=occurred_at, **fields)


def test_the_migration_leaves_the_old_table_then_days_ahead_then_a_default(
    own_engine: sa.Engine,
) -> None:
    [(legacy, lower, boundary), *days] = layout(own_engine)

    assert (legacy, lower) == ("inbox_events_legacy", None)
    assert boundary is not None
    assert boundary % DAY == 0
    assert 0 < boundary - now_ms() <= DAY
    assert [(lo, hi) for _, lo, hi in days] == [
        (boundary + n * DAY, boundary + (n + 1) * DAY) for n in range(3)
    ]
    assert days[0][0] == "inbox_events_p" + time.strftime("%Y%m%d", time.gmtime(boundary / 1000))
    assert partitions.maintain(own_engine, inbox.partitioning(7 * 86400)) == partitions.Report(), (
        "the migration's layout is what the upkeep keeps"
    )


def test_partitions_are_created_ahead_and_expired_ones_dropped(own_engine: sa.Engine) -> None:
    clock = (now_ms() // DAY + 10) * DAY + 30 * 60_000  # ten days on, half past midnight
    migrated = [name for name, _, _ in layout(own_engine)]

    report = partitions.maintain(own_engine, HOURLY, now_ms=clock)

    assert report is not None
    hour = clock // HOUR * HOUR
    assert layout(own_engine) == [
        (HOURLY.name(start), start, start + HOUR)
        for start in range(hour - 2 * HOUR, hour + 4 * HOUR, HOUR)
    ], "from the start of the retention to three hours ahead"
    assert report.created == [name for name, _, _ in layout(own_engine)]
    assert report.created[0].endswith("_2200")
    assert report.created[-1].endswith("_0300")
    assert report.dropped == migrated, "the old table first, then the migration's days"
    assert report.busy == []

    later = partitions.maintain(own_engine, HOURLY, now_ms=clock + HOUR)

    assert later is not None
    assert later.created == [HOURLY.name(hour + 4 * HOUR)]
    assert later.dropped == [HOURLY.name(hour - 2 * HOUR)]


def test_a_retry_meets_its_first_delivery_in_the_same_partition(own_database: str) -> None:
    first = event_at(1, now_ms())
    assert store_events(own_database, [first]) == 1

    assert store_events(own_database, [{**first, "attemptNumber": 1}]) == 0
    assert store_events(own_database, [{**first, "attemptNumber": 2}, first]) == 0


def test_events_older_or_later_than_every_partition_are_stored_and_answered_200(
    own_database: str, own_engine: sa.Engine
) -> None:
    clock = now_ms() + 20 * DAY
    partitions.maintain(own_engine, HOURLY, now_ms=clock)  # the old table and today: gone
    old, future = event_at(1, now_ms()), event_at(2, clock + 365 * DAY)

    with TestClient(create_app(make_settings(), database_url=own_database)) as client:
        response = post_events(client, [old, future])
        retried = post_events(client, [{**old, "attemptNumber": 1}, {**future, "attemptNumber": 1}])

    assert response.status_code == 200
    assert response.json()["stored"] == 2
    assert retried.status_code == 200
    assert retried.json()["duplicates"] == 2
    assert rows(own_engine) == {
        1: ("pending", "inbox_events_default"),
        2: ("pending", "inbox_events_default"),
    }


def test_creating_a_partition_moves_its_rows_out_of_the_default(
    own_database: str, own_engine: sa.Engine
) -> None:
    later = now_ms() + 30 * DAY
    store_events(own_database, [event_at(1, later), event_at(2, later + 7 * DAY)])
    with own_engine.connect() as connection:
        before = ids_by_event(connection)

    report = partitions.maintain(own_engine, HOURLY, now_ms=later)

    assert report is not None
    assert report.moved == 1
    moved = HOURLY.name(later // HOUR * HOUR)
    assert rows(own_engine) == {1: ("pending", moved), 2: ("pending", "inbox_events_default")}
    with own_engine.connect() as connection:
        after = ids_by_event(connection)
    assert after == before, "the same rows, ids and all"


def test_pending_failed_and_dead_rows_outlive_their_partition_and_stay_claimable(
    own_database: str, own_engine: sa.Engine
) -> None:
    fates = {1: "pending", 2: "failed", 3: "dead", 4: "done", 5: "ignored"}
    store_events(own_database, [event_at(n, now_ms() - HOUR) for n in fates])
    set_status(own_engine, fates)
    with own_engine.begin() as connection:
        connection.execute(sa.text("UPDATE inbox_events SET next_attempt_at = now()"))
        ids = ids_by_event(connection)

    report = partitions.maintain(own_engine, HOURLY, now_ms=now_ms() + 10 * DAY)

    assert report is not None
    assert "inbox_events_legacy" in report.dropped
    assert report.kept == 3
    assert rows(own_engine) == {n: (fates[n], "inbox_events_default") for n in (1, 2, 3)}
    worker = Worker(own_engine, batch_size=500, max_attempts=3, handlers=Registry())
    assert worker.drain() == 2, "the pending and the failed rows are claimed and applied"
    with own_engine.begin() as connection:
        assert inbox.replay(connection, inbox.Filters(ids=(ids[3],))) == 1
    assert worker.drain() == 1
    assert rows(own_engine) == dict.fromkeys((1, 2, 3), ("done", "inbox_events_default"))


def test_the_default_keeps_what_must_stay_and_lets_old_settled_rows_go(
    own_database: str, own_engine: sa.Engine
) -> None:
    clock = now_ms() + 20 * DAY
    partitions.maintain(own_engine, HOURLY, now_ms=clock)
    store_events(own_database, [event_at(n, now_ms()) for n in (1, 2, 3)])  # into the default
    set_status(own_engine, {1: "done", 2: "dead", 3: "done"})
    with own_engine.begin() as connection:  # 3 was stored just now: a retry of it may still come
        connection.execute(
            sa.text(
                "UPDATE inbox_events SET received_at = to_timestamp(:clock / 1000.0)"
                " - CASE WHEN event_id < 3 THEN interval '30 days' ELSE interval '0' END"
            ),
            {"clock": clock},
        )

    report = partitions.maintain(own_engine, HOURLY, now_ms=clock)

    assert report is not None
    assert report.cleaned == 1
    assert rows(own_engine) == {
        2: ("dead", "inbox_events_default"),
        3: ("done", "inbox_events_default"),
    }


def test_a_drop_interrupted_after_the_detach_is_finished_by_the_next_run(
    own_database: str, own_engine: sa.Engine
) -> None:
    store_events(own_database, [event_at(1, now_ms()), event_at(2, now_ms())])
    set_status(own_engine, {1: "failed", 2: "done"})
    with own_engine.begin() as connection:  # what a run killed between its two steps leaves
        connection.execute(sa.text("ALTER TABLE inbox_events DETACH PARTITION inbox_events_legacy"))
        connection.execute(
            sa.text(
                "COMMENT ON TABLE inbox_events_legacy IS 'detached from inbox_events by retention'"
            )
        )
    assert rows(own_engine) == {}

    daily = inbox.partitioning(7 * 86400)
    report = partitions.maintain(own_engine, daily)

    assert report is not None
    assert report.dropped == ["inbox_events_legacy"]
    assert report.kept == 1
    today = daily.name(now_ms() // DAY * DAY)
    assert today in report.created, "its range is uncovered now: within the retention, refilled"
    assert rows(own_engine) == {1: ("failed", today)}


def test_two_runners_at_once_do_the_work_once(own_engine: sa.Engine) -> None:
    clock = now_ms() + 10 * DAY
    reports: list[partitions.Report | None] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            reports.append(partitions.maintain(own_engine, HOURLY, now_ms=clock))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    done = [r for r in reports if r is not None and r.created]
    assert len(done) == 1, "one runner created the partitions; the other found them, or the lock"
    assert len(layout(own_engine)) == 6


def test_another_runner_holding_the_lock_means_nothing_to_do(own_engine: sa.Engine) -> None:
    with own_engine.connect() as other:
        other.execute(
            sa.text("SELECT pg_advisory_lock(:ns, hashtext('inbox_events'))"),
            {"ns": partitions.LOCK_NAMESPACE},
        )
        assert partitions.maintain(own_engine, HOURLY, now_ms=now_ms() + 10 * DAY) is None
        other.rollback()
        other.execute(
            sa.text("SELECT pg_advisory_unlock(:ns, hashtext('inbox_events'))"),
            {"ns": partitions.LOCK_NAMESPACE},
        )
    assert layout(own_engine)[0][0] == "inbox_events_legacy"


def test_a_long_transaction_delays_the_drop_but_never_blocks_ingest_for_long(
    own_database: str, own_engine: sa.Engine
) -> None:
    clock = now_ms() + 10 * DAY
    [(_, _, boundary), *_] = layout(own_engine)
    pauses: list[float] = []
    result: list[partitions.Report | None] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(0.05)

    def upkeep() -> None:
        result.append(
            partitions.maintain(own_engine, HOURLY, now_ms=clock, attempts=20, sleep=pause)
        )

    with own_engine.connect() as reader:  # a report reading the old rows in a long transaction
        reader.execute(sa.text(f"SELECT count(*) FROM inbox_events WHERE occurred_at < {boundary}"))
        running = threading.Thread(target=upkeep)
        running.start()
        took = []
        for n in range(1, 11):
            started = time.perf_counter()
            assert store_events(own_database, [event_at(n, now_ms())]) == 1
            took.append(time.perf_counter() - started)
        running.join(60)
        reader.rollback()

    [report] = result
    assert report is not None
    assert report.busy == ["inbox_events_legacy"]
    assert report.dropped == []
    assert len(report.created) == 6, "creating partitions needs no lock the reader holds"
    assert len(pauses) == 19, "every attempt to detach but the last is followed by a pause"
    assert max(took) < 1.0, "an insert waits one lock timeout at most, not the whole upkeep"
    again = partitions.maintain(own_engine, HOURLY, now_ms=clock)
    assert again is not None
    assert "inbox_events_legacy" in again.dropped
    assert again.kept == 10


def test_a_table_not_partitioned_is_refused_by_name(own_engine: sa.Engine) -> None:
    with pytest.raises(partitions.NotPartitioned, match="hubspot_tokens is not partitioned"):
        partitions.maintain(
            own_engine, partitions.Scheme("hubspot_tokens", "x", HOUR, 1, DAY, "true")
        )


def test_a_timestamptz_key_is_kept_the_same_way(own_database: str, own_engine: sa.Engine) -> None:
    scheme = partitions.Scheme(
        table="probe_log",
        key="at",
        width_ms=HOUR,
        ahead=1,
        retention_ms=2 * HOUR,
        keep="keep",
        key_type="timestamptz",
    )
    with own_engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE probe_log (at timestamptz NOT NULL, keep boolean NOT NULL)"
                " PARTITION BY RANGE (at)"
            )
        )
        connection.execute(sa.text("CREATE TABLE probe_log_default PARTITION OF probe_log DEFAULT"))
        connection.execute(
            sa.text(
                "INSERT INTO probe_log VALUES (now() - interval '5 hours', true),"
                " (now() - interval '5 hours', false), (now(), false)"
            )
        )
    # Bounds print in the session's time zone: the scheme must read them right in any.
    elsewhere = sa.create_engine(
        own_database, connect_args={"options": "-c TimeZone=America/New_York"}
    )
    clock = now_ms()
    hour = clock // HOUR * HOUR
    try:
        first = partitions.maintain(elsewhere, scheme, now_ms=clock)
        with elsewhere.connect() as connection:
            created = [(p.lower, p.upper) for p in partitions.attached(connection, scheme)]
        second = partitions.maintain(elsewhere, scheme, now_ms=clock + 3 * HOUR)
    finally:
        elsewhere.dispose()

    assert first is not None
    assert (first.moved, first.cleaned) == (1, 1)
    assert created == [
        (start, start + HOUR) for start in range(hour - 2 * HOUR, hour + 2 * HOUR, HOUR)
    ]
    assert second is not None
    assert second.kept == 0
    assert len(second.dropped) == 3
    with own_engine.connect() as connection:
        assert connection.scalars(sa.text("SELECT keep FROM probe_log")).all() == [True], (
            "the recent row went with its partition, the old one not kept was cleaned"
        )
