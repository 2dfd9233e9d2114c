"""service.inbox: recording a delivery once, claiming, settling and scrubbing rows (what a valid
delivery is: tests/test_batches.py).

Everything that touches inbox_events runs on the real test database.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from service import db, inbox, portals
from tests.factories import PORTAL, hubspot_event, numbered_event
from tests.support import partitions_holding, partitions_read, statements_run


def association_event(event_id: int, from_id: int, to_id: int) -> dict[str, Any]:
    """A classic contact.associationChange: no objectId, the object is in fromObjectId."""
    return hubspot_event(
        "contact.associationChange",
        eventId=event_id,
        subscriptionId=777,
        associationType="CONTACT_TO_COMPANY",
        fromObjectId=from_id,
        toObjectId=to_id,
        associationRemoved=False,
        isPrimaryAssociation=False,
    )


def body(events: Any) -> bytes:
    return json.dumps(events).encode()


def record_body(database_url: str, raw: bytes, *, version: str = "v3") -> inbox.RecordResult:
    """Parse and record one delivery the way the webhook endpoint does (autocommit)."""

    async def run() -> inbox.RecordResult:
        connection = await psycopg.AsyncConnection.connect(
            db.libpq_url(database_url), autocommit=True
        )
        async with connection:
            batch = inbox.parse_batch(raw)
            return await inbox.record_delivery(connection, batch, signature_version=version)

    return asyncio.run(run())


def record(database_url: str, events: list[dict[str, Any]]) -> inbox.RecordResult:
    return record_body(database_url, body(events))


def rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT * FROM inbox_events ORDER BY id")))


# --- record_delivery: each event once, by its identity ---------------------------------------


def test_delivery_is_stored_with_its_columns(clean_db: str, engine: sa.Engine) -> None:
    event = numbered_event(5, subscriptionId=999)
    result = record_body(clean_db, body([event]), version="v1")
    assert (result.received, result.stored, result.duplicates) == (1, 1, 0)
    (row,) = rows(engine)
    assert (row.portal_id, row.subscription_id, row.event_id) == (PORTAL, 999, 5)
    assert (row.object_id, row.occurred_at) == (105, event["occurredAt"])
    assert row.subscription_type == "contact.propertyChange"
    assert row.signature_version == "v1"
    assert row.payload == event
    assert (row.status, row.attempts, row.last_error) == ("pending", 0, None)


def test_empty_batch_records_nothing(clean_db: str, engine: sa.Engine) -> None:
    result = record_body(clean_db, b"[]")
    assert (result.received, result.stored) == (0, 0)
    assert rows(engine) == []


def test_same_event_twice_in_one_body_is_stored_once(clean_db: str, engine: sa.Engine) -> None:
    result = record(clean_db, [numbered_event(1), numbered_event(1), numbered_event(2)])
    assert (result.received, result.stored, result.duplicates) == (3, 2, 1)
    assert [r.event_id for r in rows(engine)] == [1, 2]


def test_concurrent_deliveries_of_the_same_events_in_any_order_never_deadlock(
    clean_db: str, engine: sa.Engine
) -> None:
    # HubSpot's retry of a batch can race its first delivery, and two batches can overlap in
    # another order; each insert takes its rows' locks in one order, so neither waits in a cycle.
    events = [numbered_event(n) for n in range(1, 101)]
    forward, backward = inbox.parse_batch(body(events)), inbox.parse_batch(body(events[::-1]))

    async def run() -> list[int]:
        url = db.libpq_url(clean_db)
        first = await psycopg.AsyncConnection.connect(url, autocommit=True)
        second = await psycopg.AsyncConnection.connect(url, autocommit=True)
        stored = []
        async with first, second:
            for _ in range(10):
                await first.execute("TRUNCATE inbox_events")
                results = await asyncio.gather(
                    inbox.record_delivery(first, forward, signature_version="v3"),
                    inbox.record_delivery(second, backward, signature_version="v3"),
                )
                stored.append(sum(result.stored for result in results))
        return stored

    assert asyncio.run(run()) == [100] * 10


def test_retry_with_a_different_attempt_number_is_stored_once(
    clean_db: str, engine: sa.Engine
) -> None:
    assert record(clean_db, [numbered_event(1, attemptNumber=0)]).stored == 1
    retry = record(clean_db, [numbered_event(1, attemptNumber=3)])
    assert (retry.stored, retry.duplicates) == (0, 1)
    (row,) = rows(engine)
    assert row.payload["attemptNumber"] == 0


@pytest.mark.parametrize(
    "change",
    [
        {"objectId": 999},
        {"occurredAt": 1_800_000_000_000},
        {"subscriptionId": 54},
        {"portalId": 1234},
    ],
)
def test_same_event_id_about_something_else_is_stored_twice(
    change: dict[str, int], clean_db: str, engine: sa.Engine
) -> None:
    first = numbered_event(1)
    other = {**first, **change}
    assert record(clean_db, [first]).stored == 1
    assert record(clean_db, [other]).stored == 1
    assert [r.event_id for r in rows(engine)] == [1, 1]


def test_association_events_are_deduplicated_by_from_object_id(
    clean_db: str, engine: sa.Engine
) -> None:
    # HubSpot reports an association on both sides; one eventId may cover several objects.
    result = record(
        clean_db,
        [association_event(9, 1, 2), association_event(9, 1, 2), association_event(9, 3, 2)],
    )
    assert (result.received, result.stored) == (3, 2)
    assert [r.object_id for r in rows(engine)] == [1, 3]
    assert record(clean_db, [association_event(9, 3, 2)]).stored == 0


def test_missing_subscription_id_and_object_id_are_keyed_as_zero(
    clean_db: str, engine: sa.Engine
) -> None:
    event = numbered_event(1, subscriptionType="contact.privacyDeletion")
    del event["subscriptionId"], event["objectId"]
    assert record(clean_db, [event, event]).stored == 1
    (row,) = rows(engine)
    assert (row.subscription_id, row.object_id) == (0, 0)


def test_event_type_names_the_row_when_subscription_type_is_absent(
    clean_db: str, engine: sa.Engine
) -> None:
    event = numbered_event(1)
    event["eventType"] = event.pop("subscriptionType")
    record(clean_db, [event])
    assert rows(engine)[0].subscription_type == "contact.propertyChange"


def test_body_with_nul_and_lone_surrogate_is_storable(clean_db: str, engine: sa.Engine) -> None:
    raw = (
        b'[{"eventId":1,"portalId":2,"occurredAt":3,"subscriptionType":"contact.propertyChange",'
        b'"objectId":4,"propertyValue":"a\\u0000b\\udc00 \\u00e4"}]'
    )
    assert record_body(clean_db, raw).stored == 1
    assert rows(engine)[0].payload["propertyValue"] == "a\ufffdb\ufffd \u00e4"


def test_unicode_is_stored_unchanged(clean_db: str, engine: sa.Engine) -> None:
    value = 'Bj\u00f6rk \u6771\u4eac \U0001f600 \\ "quoted"'
    record(clean_db, [numbered_event(1, propertyValue=value)])
    assert rows(engine)[0].payload["propertyValue"] == value


def test_huge_number_next_to_a_nul_is_refused_not_retried_forever() -> None:
    # Replacing the NUL means re-encoding the body, and 1e400 has no finite float to come out
    # as: a clear 400 instead of an insert that would fail on every retry.
    raw = (
        b'[{"eventId":1,"portalId":2,"occurredAt":3,"subscriptionType":"contact.propertyChange",'
        b'"objectId":4,"propertyValue":"a\\u0000b","score":1e400}]'
    )
    with pytest.raises(inbox.InvalidBatch, match="number too large to store"):
        inbox.parse_batch(raw)


# --- claim_due and settle ----------------------------------------------------------------------


@pytest.fixture
def stored(clean_db: str) -> list[int]:
    """Three pending rows in the inbox; their ids."""
    record(clean_db, [numbered_event(i) for i in (1, 2, 3)])
    return [1, 2, 3]


def claim(engine: sa.Engine, limit: int = 10) -> list[inbox.Claimed]:
    with engine.begin() as connection:
        return inbox.claim_due(connection, limit)


def outcome(engine: sa.Engine, row_id: int, status: str, error: str | None = None) -> inbox.Outcome:
    """How applying the stored row ended, addressed as a worker does: by id and occurred_at."""
    with engine.connect() as connection:
        occurred_at = connection.scalar(
            sa.text("SELECT occurred_at FROM inbox_events WHERE id = :id"), {"id": row_id}
        )
    return inbox.Outcome(row_id, occurred_at, status, error)


def settle(engine: sa.Engine, outcomes: list[inbox.Outcome], *, max_attempts: int = 3) -> None:
    with engine.begin() as connection:
        inbox.settle(connection, outcomes, max_attempts=max_attempts)


def row(engine: sa.Engine, row_id: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT status, attempts, last_error, processed_at,"
                " extract(epoch FROM next_attempt_at - now()) AS due_in"
                " FROM inbox_events WHERE id = :id"
            ),
            {"id": row_id},
        ).one()


def make_due(engine: sa.Engine) -> None:
    """Let time pass: every backoff is over."""
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE inbox_events SET next_attempt_at = now() - interval '1 second'")
        )


def test_claim_due_returns_pending_rows_oldest_first_up_to_the_limit(
    stored: list[int], engine: sa.Engine
) -> None:
    claimed = claim(engine, limit=2)
    assert [c.id for c in claimed] == [1, 2]
    assert claimed[0].payload == numbered_event(1)


def test_rows_another_transaction_holds_are_skipped(stored: list[int], database_url: str) -> None:
    engine = db.create_engine(database_url, pool_size=2, statement_timeout_ms=5000)
    try:
        with engine.begin() as holder:
            held = [c.id for c in inbox.claim_due(holder, 2)]
            assert [c.id for c in claim(engine)] == [3]
        assert held == [1, 2]
        assert [c.id for c in claim(engine)] == [1, 2, 3]
    finally:
        engine.dispose()


@pytest.mark.parametrize("status", ["done", "ignored"])
def test_settled_rows_are_finished_and_not_claimed_again(
    status: str, stored: list[int], engine: sa.Engine
) -> None:
    settle(engine, [outcome(engine, 1, status)])
    settled = row(engine, 1)
    assert (settled.status, settled.attempts, settled.last_error) == (status, 1, None)
    assert settled.processed_at is not None
    make_due(engine)
    assert [c.id for c in claim(engine)] == [2, 3]


def test_failed_row_backs_off_about_five_seconds_then_is_due_again(
    stored: list[int], engine: sa.Engine
) -> None:
    settle(engine, [outcome(engine, 2, "failed", "ValueError: boom")])
    failed = row(engine, 2)
    assert (failed.status, failed.attempts, failed.last_error) == ("failed", 1, "ValueError: boom")
    assert failed.processed_at is None
    # 5 s with 0.5-1.5 jitter.
    assert 2.4 <= failed.due_in <= 7.6
    assert [c.id for c in claim(engine)] == [1, 3]
    make_due(engine)
    assert [c.id for c in claim(engine)] == [1, 2, 3]


def test_backoff_doubles_with_each_failure(stored: list[int], engine: sa.Engine) -> None:
    for _ in range(3):
        make_due(engine)
        settle(engine, [outcome(engine, 1, "failed", "boom")], max_attempts=10)
    third = row(engine, 1)
    assert third.attempts == 3
    # 5 * 2**2 = 20 s with 0.5-1.5 jitter.
    assert 9.9 <= third.due_in <= 30.1


def test_failure_at_max_attempts_is_dead_and_never_claimed(
    stored: list[int], engine: sa.Engine
) -> None:
    for _ in range(2):
        make_due(engine)
        settle(engine, [outcome(engine, 1, "failed", "boom")], max_attempts=3)
    assert row(engine, 1).status == "failed"
    make_due(engine)
    settle(engine, [outcome(engine, 1, "failed", "still boom")], max_attempts=3)
    dead = row(engine, 1)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 3, "still boom")
    make_due(engine)
    assert [c.id for c in claim(engine)] == [2, 3]


def test_one_settle_records_every_outcome(stored: list[int], engine: sa.Engine) -> None:
    settle(
        engine,
        [
            outcome(engine, 1, "done"),
            outcome(engine, 2, "ignored"),
            outcome(engine, 3, "failed", "x"),
        ],
    )
    assert [row(engine, i).status for i in (1, 2, 3)] == ["done", "ignored", "failed"]


def test_settling_nothing_changes_nothing(stored: list[int], engine: sa.Engine) -> None:
    settle(engine, [])
    assert {row(engine, i).status for i in stored} == {"pending"}


def dated(first_id: int, count: int, days_ahead: int) -> list[dict[str, Any]]:
    """Events occurring `days_ahead` days from now: in that day's partition, or the default."""
    occurred_at = int(time.time() * 1000) + days_ahead * 86_400_000
    return [
        numbered_event(n, occurredAt=occurred_at + n) for n in range(first_id, first_id + count)
    ]


def test_claimed_rows_carry_their_partition_key(clean_db: str, engine: sa.Engine) -> None:
    record(clean_db, dated(1, 2, days_ahead=1))
    occurred = {r.id: r.occurred_at for r in rows(engine)}
    assert {c.id: c.occurred_at for c in claim(engine)} == occurred


def test_settle_reads_only_the_partition_of_its_rows(clean_db: str, engine: sa.Engine) -> None:
    record(clean_db, dated(1, 5, days_ahead=0) + dated(11, 5, days_ahead=1) + dated(21, 5, 40))
    with engine.begin() as connection:
        claimed = inbox.claim_due(connection, 15)
        tomorrow = [c for c in claimed if 11 <= c.payload["eventId"] <= 15]
        outcomes = [inbox.Outcome(c.id, c.occurred_at, "done") for c in tomorrow]
        with statements_run(engine, "UPDATE inbox_events") as seen:
            inbox.settle(connection, outcomes, max_attempts=3)
    [(statement, parameters)] = seen
    [partition] = partitions_holding(engine, [c.id for c in tomorrow])

    read = partitions_read(engine, statement, parameters)

    # One partition, probed once per row at most (or scanned once): not every partition's id index.
    assert set(read) == {partition}
    assert read[partition] <= len(tomorrow)


def test_one_settle_records_outcomes_in_every_partition_of_the_batch(
    clean_db: str, engine: sa.Engine
) -> None:
    record(clean_db, dated(1, 2, days_ahead=0) + dated(11, 2, days_ahead=2) + dated(21, 2, 40))
    with engine.begin() as connection:
        claimed = inbox.claim_due(connection, 10)
        failed = {11, 21}
        outcomes = [
            inbox.Outcome(
                c.id, c.occurred_at, "failed" if c.payload["eventId"] in failed else "done"
            )
            for c in claimed
        ]
        inbox.settle(connection, outcomes, max_attempts=3)
    assert len(claimed) == 6
    assert len(partitions_holding(engine, [c.id for c in claimed])) == 3
    assert {r.event_id: r.status for r in rows(engine)} == {
        1: "done",
        2: "done",
        11: "failed",
        12: "done",
        21: "failed",
        22: "done",
    }


# --- scrub_contacts ------------------------------------------------------------------------------


@pytest.fixture
def mixed(clean_db: str) -> str:
    """Stored events about contact 101 and others, with property values."""
    record(
        clean_db,
        [
            numbered_event(1, objectId=101, propertyValue="ada@example.com"),
            numbered_event(
                2,
                subscriptionType="object.propertyChange",
                objectTypeId="0-1",
                objectId=101,
                propertyName="firstname",
                propertyValue="Ada",
            ),
            numbered_event(3, objectId=102, propertyValue="grace@example.com"),
            numbered_event(4, portalId=999, objectId=101, propertyValue="other@example.com"),
            numbered_event(
                5, subscriptionType="company.propertyChange", objectId=101, propertyValue="Acme"
            ),
        ],
    )
    creation = numbered_event(6, subscriptionType="contact.creation", objectId=101)
    del creation["propertyName"], creation["propertyValue"]
    record(clean_db, [creation])
    return clean_db


def payloads(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    return {r.event_id: r.payload for r in rows(engine)}


def scrub(engine: sa.Engine, contacts: list[tuple[int, int]]) -> None:
    with engine.begin() as connection:
        inbox.scrub_contacts(connection, contacts)


def test_scrub_removes_the_contacts_property_values_and_marks_the_events(
    mixed: str, engine: sa.Engine
) -> None:
    creation = payloads(engine)[6]
    scrub(engine, [(PORTAL, 101)])
    after = payloads(engine)
    for event_id in (1, 2):
        assert after[event_id]["propertyValue"] is None
        assert after[event_id]["erased"] is True
        assert after[event_id]["propertyName"] in ("email", "firstname")
    assert after[3]["propertyValue"] == "grace@example.com"
    assert after[4]["propertyValue"] == "other@example.com"
    assert after[5]["propertyValue"] == "Acme"
    assert after[6] == creation


def test_scrub_of_no_contacts_changes_nothing(mixed: str, engine: sa.Engine) -> None:
    before = payloads(engine)
    scrub(engine, [])
    assert payloads(engine) == before


def test_scrub_twice_is_the_same_as_once(mixed: str, engine: sa.Engine) -> None:
    scrub(engine, [(PORTAL, 101), (PORTAL, 101)])
    once = payloads(engine)
    scrub(engine, [(PORTAL, 101)])
    assert payloads(engine) == once


def test_scrub_skips_rows_a_worker_holds(mixed: str, database_url: str) -> None:
    engine = db.create_engine(database_url, pool_size=2, statement_timeout_ms=5000)
    try:
        with engine.begin() as worker:
            held = {c.payload["eventId"]: c.id for c in inbox.claim_due(worker, 1)}
            scrub(engine, [(PORTAL, 101)])
        after = payloads(engine)
    finally:
        engine.dispose()
    assert list(held) == [1]
    assert after[1]["propertyValue"] == "ada@example.com"
    assert after[2]["propertyValue"] is None


# --- claim_due is fair across portals ----------------------------------------------------------

BULK = 1  # a portal with a bulk import's backlog


def portal_events(portal: int, count: int) -> list[dict[str, Any]]:
    """`count` property changes in one portal, stored by one statement (so due at one instant)."""
    return [numbered_event(n, portalId=portal) for n in range(1, count + 1)]


def by_portal(claimed: list[inbox.Claimed]) -> dict[int, list[int]]:
    """Claimed row ids per portal, in claim order."""
    grouped: dict[int, list[int]] = {}
    for c in claimed:
        grouped.setdefault(c.payload["portalId"], []).append(c.id)
    return grouped


def ids_of(engine: sa.Engine, portal: int) -> list[int]:
    """The portal's row ids, oldest due first."""
    with engine.connect() as connection:
        return list(
            connection.scalars(
                sa.text(
                    "SELECT id FROM inbox_events WHERE portal_id = :p ORDER BY next_attempt_at, id"
                ),
                {"p": portal},
            )
        )


def claim_and_settle(engine: sa.Engine, limit: int) -> list[inbox.Claimed]:
    """One batch, as a worker takes it: claimed, then settled done."""
    with engine.begin() as connection:
        claimed = inbox.claim_due(connection, limit)
        outcomes = [inbox.Outcome(c.id, c.occurred_at, "done") for c in claimed]
        inbox.settle(connection, outcomes, max_attempts=3)
    return claimed


def test_one_portals_backlog_does_not_hold_up_the_others(clean_db: str, engine: sa.Engine) -> None:
    record(clean_db, portal_events(BULK, 2_000))
    for portal in (11, 12, 13):
        record(clean_db, portal_events(portal, 3))

    claimed = by_portal(claim(engine, limit=100))

    assert {p: len(ids) for p, ids in claimed.items()} == {BULK: 91, 11: 3, 12: 3, 13: 3}
    # The rest of the batch comes from the backlog, its oldest rows first.
    assert claimed[BULK] == ids_of(engine, BULK)[:91]


def test_portals_with_backlogs_share_the_batch(clean_db: str, engine: sa.Engine) -> None:
    for portal in (21, 22, 23):
        record(clean_db, portal_events(portal, 300))

    claimed = by_portal(claim(engine, limit=100))

    # 100 over 3: the portal that has waited longest takes the odd row.
    assert {p: len(ids) for p, ids in claimed.items()} == {21: 34, 22: 33, 23: 33}
    for portal, ids in claimed.items():
        assert ids == ids_of(engine, portal)[: len(ids)]


def test_more_portals_than_the_batch_take_turns_by_how_long_they_have_waited(
    clean_db: str, engine: sa.Engine
) -> None:
    record(clean_db, portal_events(31, 3))
    for portal in (32, 33, 34, 35, 36):
        record(clean_db, portal_events(portal, 1))

    first = by_portal(claim_and_settle(engine, 4))
    second = by_portal(claim_and_settle(engine, 4))

    assert {p: len(ids) for p, ids in first.items()} == {31: 1, 32: 1, 33: 1, 34: 1}
    # Nobody starves: the portals left out come next, alongside what 31 still has.
    assert {p: len(ids) for p, ids in second.items()} == {31: 2, 35: 1, 36: 1}


def test_within_a_portal_the_oldest_due_row_comes_first(clean_db: str, engine: sa.Engine) -> None:
    record(clean_db, portal_events(41, 6))
    record(clean_db, portal_events(42, 6))
    with engine.begin() as connection:
        # Retries due at other times than their arrival order; one is still backing off.
        connection.execute(
            sa.text(
                "UPDATE inbox_events SET status = 'failed', next_attempt_at = CASE"
                " WHEN event_id = 6 THEN now() + interval '1 hour'"
                " ELSE now() - (event_id % 3) * interval '1 minute' END"
                " WHERE event_id IN (2, 3, 5, 6)"
            )
        )

    claimed = by_portal(claim(engine, limit=100))

    for portal in (41, 42):
        due = ids_of(engine, portal)[:5]  # the last is the one backing off
        assert claimed[portal] == due
        assert len(set(due)) == 5


def test_rows_of_one_portal_come_in_claim_order_across_batches(
    clean_db: str, engine: sa.Engine
) -> None:
    record(clean_db, portal_events(BULK, 250))
    record(clean_db, portal_events(43, 2))

    taken = [c.id for _ in range(3) for c in claim_and_settle(engine, 100) if c.id <= 250]

    assert taken == ids_of(engine, BULK)


def test_a_paused_portal_is_never_claimed_until_it_resumes(
    clean_db: str, engine: sa.Engine
) -> None:
    record(clean_db, portal_events(51, 3))
    record(clean_db, portal_events(52, 2))
    with engine.begin() as connection:
        portals.pause(connection, 51, "bulk import")

    assert set(by_portal(claim(engine))) == {52}
    assert set(by_portal(claim_and_settle(engine, 10))) == {52}
    assert claim(engine) == []

    with engine.begin() as connection:
        assert portals.resume(connection, 51)
    assert by_portal(claim(engine)) == {51: ids_of(engine, 51)}


def test_concurrent_claims_never_take_a_row_twice(clean_db: str, database_url: str) -> None:
    record(clean_db, portal_events(BULK, 1_000))
    for portal in range(60, 80):
        record(clean_db, portal_events(portal, 5))
    workers = 4
    engine = db.create_engine(database_url, pool_size=workers, statement_timeout_ms=10_000)
    taken: list[list[int]] = [[] for _ in range(workers)]
    start = threading.Barrier(workers)

    def work(mine: list[int]) -> None:
        start.wait()
        while True:
            with engine.begin() as connection:
                claimed = inbox.claim_due(connection, 50)
                if not claimed:
                    return
                time.sleep(0.005)  # hold the batch while the others claim
                outcomes = [inbox.Outcome(c.id, c.occurred_at, "done") for c in claimed]
                inbox.settle(connection, outcomes, max_attempts=3)
            mine.extend(c.id for c in claimed)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in taken]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        engine.dispose()

    every = [i for mine in taken for i in mine]
    assert sorted(every) == list(range(1, 1_101))
    assert sum(1 for mine in taken if mine) > 1, "the workers should have shared the work"
