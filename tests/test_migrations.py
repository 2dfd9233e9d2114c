"""Alembic: upgrade from empty matches the models; downgrade and upgrade again work; the inbox
becomes partitioned (0010) on a populated database keeping every row, and back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service import db, inbox, outbox
from service.models import metadata
from tests.factories import action_run, numbered_event
from tests.support import empty_database

ROWS = 1_000_000
DAY = 86_400_000


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    """An empty database of its own on the test server."""
    with empty_database(database_url, "hubspot_webhooks_migrations") as url:
        yield url


def schema_diff(url: str) -> list[object]:
    """What differs between the models and the database, partitions aside (the models declare
    the partitioned table; its partitions are service/partitions.py's)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            partitions = set(
                connection.scalars(sa.text("SELECT relname FROM pg_class WHERE relispartition"))
            )
            context = MigrationContext.configure(
                connection,
                opts={
                    "include_name": lambda name, kind, _: kind != "table" or name not in partitions
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_from_empty_matches_the_models(scratch_url: str) -> None:
    db.migrate(scratch_url)

    assert current_revision(scratch_url) == db.migration_head()
    assert schema_diff(scratch_url) == []


def test_downgrade_to_base_and_upgrade_again(scratch_url: str) -> None:
    db.migrate(scratch_url)
    db.downgrade(scratch_url, "base")

    assert current_revision(scratch_url) is None
    engine = sa.create_engine(scratch_url)
    try:
        assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()

    db.migrate(scratch_url)
    assert current_revision(scratch_url) == db.migration_head()


def test_migrate_twice_is_a_no_op(scratch_url: str) -> None:
    db.migrate(scratch_url)
    db.migrate(scratch_url)

    assert current_revision(scratch_url) == db.migration_head()


def inbox_fingerprint(connection: sa.Connection) -> tuple[int, int]:
    """The number of inbox rows and a checksum of their contents."""
    count, checksum = connection.execute(
        sa.text(
            "SELECT count(*), coalesce(sum(hashtext((portal_id, subscription_id, event_id,"
            " object_id, occurred_at, id, status, attempts, payload, received_at)::text)), 0)"
            " FROM inbox_events"
        )
    ).one()
    return int(count), int(checksum)


def store(engine: sa.Engine, event_id: int) -> int:
    """Store one new event through the ingest path; its inbox id."""
    url = engine.url.render_as_string(hide_password=False)
    assert asyncio.run(_record(url, [numbered_event(event_id)])) == 1
    with engine.connect() as connection:
        return int(
            connection.scalar(
                sa.text("SELECT max(id) FROM inbox_events WHERE event_id = :e"), {"e": event_id}
            )
        )


async def _record(url: str, events: list[dict[str, object]]) -> int:
    async with await psycopg.AsyncConnection.connect(db.libpq_url(url), autocommit=True) as conn:
        batch = inbox.parse_batch(json.dumps(events).encode())
        return (await inbox.record_delivery(conn, batch, signature_version="v3")).stored


def test_the_inbox_is_partitioned_with_its_old_table_attached_not_copied(scratch_url: str) -> None:
    db.migrate(scratch_url, "0010")
    engine = sa.create_engine(scratch_url)
    try:
        with engine.connect() as connection:
            indexes = set(
                connection.scalars(
                    sa.text("SELECT indexname FROM pg_indexes WHERE tablename = :t"),
                    {"t": "inbox_events_legacy"},
                )
            )
            kind = connection.scalar(
                sa.text("SELECT relkind FROM pg_class WHERE oid = 'inbox_events'::regclass")
            )
    finally:
        engine.dispose()

    assert kind == "p"
    assert indexes == {
        "pk_inbox_events_legacy",
        *(
            f"ix_inbox_events_legacy_{name}"
            for name in ("id", "due", "received_at", "object", "open", "processed_at")
        ),
    }, "ATTACH reused the old table's indexes: nothing was built under its lock"


def test_a_populated_inbox_keeps_every_row_through_upgrade_and_downgrade(scratch_url: str) -> None:
    db.migrate(scratch_url, "0009")
    engine = sa.create_engine(scratch_url)
    now = int(time.time() * 1000)
    boundary = (now // DAY + 1) * DAY
    try:
        with engine.begin() as connection:  # a million rows over ten days, every status
            connection.execute(
                sa.text(
                    "INSERT INTO inbox_events (portal_id, subscription_id, event_id, object_id,"
                    " occurred_at, subscription_type, signature_version, payload, status)"
                    " SELECT 62515 + n % 7, 1, n, n % 5000, :now - (n % 10) * 86400000 - n % 997,"
                    " 'contact.propertyChange', 'v3', jsonb_build_object('eventId', n),"
                    " (ARRAY['done', 'done', 'pending', 'failed', 'dead', 'ignored'])[1 + n % 6]"
                    " FROM generate_series(1, :rows) AS n"
                ),
                {"now": now, "rows": ROWS},
            )
            # A sender's clock ahead: after the boundary, and far in the future; then the newest
            # row purged, whose id must never be handed out again.
            for event_id, occurred_at in (
                (-1, boundary),
                (-2, boundary + DAY),
                (-3, now + 400 * DAY),
                (-4, now),
            ):
                connection.execute(
                    sa.text(
                        "INSERT INTO inbox_events (portal_id, subscription_id, event_id,"
                        " object_id, occurred_at, subscription_type, signature_version, payload)"
                        " VALUES (62515, 1, :e, 1, :at, 'contact.creation', 'v3', '{}')"
                    ),
                    {"e": event_id, "at": occurred_at},
                )
            connection.execute(sa.text("DELETE FROM inbox_events WHERE event_id = -4"))
            before = inbox_fingerprint(connection)

        db.migrate(scratch_url)

        with engine.connect() as connection:
            assert inbox_fingerprint(connection) == before
            placed: dict[int, str] = dict(
                connection.execute(
                    sa.text(
                        "SELECT event_id, tableoid::regclass::text FROM inbox_events"
                        " WHERE event_id < 0"
                    )
                ).all()
            )
        assert placed[-1].startswith("inbox_events_p")
        assert placed[-2].startswith("inbox_events_p")
        assert placed[-3] == "inbox_events_default"
        assert store(engine, ROWS + 1) == ROWS + 5, "past every id issued, the purged one too"

        with engine.connect() as connection:
            after_upgrade = inbox_fingerprint(connection)
        db.downgrade(scratch_url, "0009")
        with engine.connect() as connection:
            assert inbox_fingerprint(connection) == after_upgrade
            kind = connection.scalar(
                sa.text("SELECT relkind FROM pg_class WHERE oid = 'inbox_events'::regclass")
            )
        assert kind == "r"
        assert store(engine, ROWS + 2) == ROWS + 6, "the identity goes on from the sequence"

        db.migrate(scratch_url)
        assert store(engine, ROWS + 3) == ROWS + 7
        assert schema_diff(scratch_url) == []
    finally:
        engine.dispose()


def test_a_connection_open_across_the_upgrade_keeps_storing(scratch_url: str) -> None:
    # The running release keeps its connections (and their prepared statements) while the new
    # one migrates: its inserts must find the partitioned table by name.
    db.migrate(scratch_url, "0009")

    async def deliver_across_the_upgrade() -> int:
        async with await psycopg.AsyncConnection.connect(
            db.libpq_url(scratch_url), autocommit=True, prepare_threshold=0
        ) as connection:
            for event_id in (1, 2):
                batch = inbox.parse_batch(json.dumps([numbered_event(event_id)]).encode())
                await inbox.record_delivery(connection, batch, signature_version="v3")
            await asyncio.to_thread(db.migrate, scratch_url)
            batch = inbox.parse_batch(json.dumps([numbered_event(3)]).encode())
            return (await inbox.record_delivery(connection, batch, signature_version="v3")).stored

    assert asyncio.run(deliver_across_the_upgrade()) == 1
    engine = sa.create_engine(scratch_url)
    try:
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT count(*) FROM inbox_events")) == 3
    finally:
        engine.dispose()


def test_the_fair_claims_index_is_built_on_every_partition_and_attached(scratch_url: str) -> None:
    # 0011 builds it per partition CONCURRENTLY (no partitioned CREATE INDEX, which would hold
    # ingest for the whole build), then attaches each to the index it creates ON ONLY the parent.
    db.migrate(scratch_url, "0010")
    engine = sa.create_engine(scratch_url)
    try:
        store(engine, 1)
        db.migrate(scratch_url)
        with engine.connect() as connection:
            partitions = set(
                connection.scalars(
                    sa.text(
                        "SELECT inhrelid FROM pg_inherits"
                        " WHERE inhparent = 'inbox_events'::regclass"
                    )
                )
            )
            attached = connection.execute(
                sa.text(
                    "SELECT i.indrelid, i.indisvalid FROM pg_inherits h"
                    " JOIN pg_index i ON i.indexrelid = h.inhrelid"
                    " WHERE h.inhparent = 'ix_inbox_events_due_by_portal'::regclass"
                )
            ).all()
            valid = connection.scalar(
                sa.text(
                    "SELECT indisvalid FROM pg_index"
                    " WHERE indexrelid = 'ix_inbox_events_due_by_portal'::regclass"
                )
            )
        assert valid is True
        assert {relation for relation, _ in attached} == partitions
        assert all(ok for _, ok in attached)

        db.downgrade(scratch_url, "0010")
        with engine.connect() as connection:
            left = connection.scalars(
                sa.text("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%due_by_portal'")
            ).all()
            assert left == []
            assert connection.scalar(sa.text("SELECT to_regclass('portal_controls')")) is None
    finally:
        engine.dispose()


def runs_fingerprint(connection: sa.Connection) -> tuple[int, int]:
    """The number of action runs and a checksum of their contents (the columns before 0013)."""
    count, checksum = connection.execute(
        sa.text(
            "SELECT count(*), coalesce(sum(hashtext((portal_id, inbox_id, rule, action_index, id,"
            " action, payload, status, attempts, next_attempt_at, created_at)::text)), 0)"
            " FROM action_runs"
        )
    ).one()
    return int(count), int(checksum)


def test_populated_action_runs_keep_every_row_through_upgrade_and_downgrade(
    scratch_url: str,
) -> None:
    db.migrate(scratch_url, "0012")
    engine = sa.create_engine(scratch_url)
    now = int(time.time() * 1000)
    events = 100_000
    try:
        with engine.begin() as connection:
            # Events for the first runs (ids 1..events); the other runs' events are purged.
            connection.execute(
                sa.text(
                    "INSERT INTO inbox_events (portal_id, subscription_id, event_id, object_id,"
                    " occurred_at, subscription_type, signature_version, payload, status)"
                    " SELECT 62515, 1, n, n, :now - (n % 10) * 86400000 - n, 'deal.creation',"
                    " 'v3', '{}', 'done' FROM generate_series(1, :events) AS n"
                ),
                {"now": now, "events": events},
            )
            connection.execute(  # a million runs over ten days, every status
                sa.text(
                    "INSERT INTO action_runs (portal_id, inbox_id, rule, action_index, action,"
                    " object_type, object_id, payload, status, created_at)"
                    " SELECT 62515, n, 'won', 0, 'log', 'deals', n, jsonb_build_object('n', n),"
                    " (ARRAY['done', 'done', 'pending', 'failed', 'dead'])[1 + n % 5],"
                    " now() - (n % 10) * interval '1 day' FROM generate_series(1, :rows) AS n"
                ),
                {"rows": ROWS},
            )
            # An event dated after the boundary (a sender's clock ahead) fired a run.
            connection.execute(
                sa.text(
                    "INSERT INTO inbox_events (portal_id, subscription_id, event_id, object_id,"
                    " occurred_at, id, subscription_type, signature_version, payload)"
                    " VALUES (62515, 1, -1, 1, :at, :id, 'deal.creation', 'v3', '{}')"
                ),
                {"at": now + 2 * DAY, "id": 2 * ROWS},  # no other run names this id
            )
            connection.execute(
                sa.text(
                    "INSERT INTO action_runs (portal_id, inbox_id, rule, action_index, action,"
                    " object_type, object_id, payload) SELECT 62515, id, 'future', 0, 'log',"
                    " 'deals', 1, '{}' FROM inbox_events WHERE event_id = -1"
                )
            )
            before = runs_fingerprint(connection)

        db.migrate(scratch_url)

        with engine.connect() as connection:
            assert runs_fingerprint(connection) == before
            wrong = connection.scalar(
                sa.text(
                    "SELECT count(*) FROM action_runs a LEFT JOIN inbox_events i"
                    " ON i.id = a.inbox_id WHERE a.event_occurred_at <> coalesce(i.occurred_at,"
                    " (extract(epoch FROM a.created_at) * 1000)::bigint)"
                )
            )
            assert wrong == 0, "the event's occurredAt, else the run's creation"
            placed = connection.execute(
                sa.text("SELECT tableoid::regclass::text, count(*) FROM action_runs GROUP BY 1")
            ).all()
            future = datetime.fromtimestamp((now + 2 * DAY) // DAY * DAY / 1000, UTC)
            assert sorted(placed) == [
                ("action_runs_legacy", ROWS),
                (future.strftime("action_runs_p%Y%m%d"), 1),
            ], "the old table attached; the run dated after the boundary moved to its day"
            last_id = connection.scalar(sa.text("SELECT max(id) FROM action_runs"))
        with engine.begin() as connection:
            first = connection.execute(
                sa.text("SELECT inbox_id, event_occurred_at FROM action_runs WHERE id = 1")
            ).one()
            again = action_run(first.inbox_id, occurred_at=first.event_occurred_at)
            again["portal_id"] = 62515
            assert outbox.enqueue(connection, [again]) == 0, "still a duplicate"
            assert outbox.enqueue(connection, [action_run(ROWS + 5, occurred_at=now)]) == 1
            new_id = connection.scalar(
                sa.text("SELECT id FROM action_runs WHERE inbox_id = :i"), {"i": ROWS + 5}
            )
        assert new_id == last_id + 2, "past every id (the duplicate drew one too, as before)"

        with engine.connect() as connection:
            after_upgrade = runs_fingerprint(connection)
        db.downgrade(scratch_url, "0012")
        with engine.connect() as connection:
            assert runs_fingerprint(connection) == after_upgrade
            kind = connection.scalar(
                sa.text("SELECT relkind FROM pg_class WHERE oid = 'action_runs'::regclass")
            )
        assert kind == "r"
        db.migrate(scratch_url)
        assert schema_diff(scratch_url) == []
    finally:
        engine.dispose()
