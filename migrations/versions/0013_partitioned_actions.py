"""partitioned actions: action_runs partitioned by its event's occurredAt, the API call log by
minute, one range a day each plus a default; every existing row kept

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

**action_runs** gets `event_occurred_at` (the firing event's occurredAt, epoch ms) in its primary
key and is partitioned by it, with the inbox's day boundaries (service/partitions.py keeps the
layout afterwards). A rule fires once per inbox row and an inbox row has one occurredAt, so
(portal_id, inbox_id, rule, action_index, event_occurred_at) dedupes exactly as before. The old
table becomes the first partition without being copied, as 0010 did for the inbox:

1. Outside the migration's transaction (the running release goes on enqueueing and settling
   runs): the column is added, nullable (metadata only); existing rows get their inbox row's
   occurred_at, in batches of ids; the unique index of the new key and a partial index of the
   rows still NULL (the runs the running release enqueues meanwhile) are built CONCURRENTLY.
   A run whose inbox row is gone (purged) gets its created_at in ms: an event occurs before
   its runs are created, so the run lands in the same or a later day than its event and is kept
   at least as long; no inbox row can fire it again (inbox ids are never reused).
2. In one transaction, ACCESS EXCLUSIVE on action_runs until the commit: the rows enqueued since
   are filled through the partial index; a validated `CHECK (event_occurred_at IS NOT NULL AND
   event_occurred_at < boundary)` (the one scan under the lock) proves both NOT NULL and the
   range; the primary key is swapped for the prebuilt unique index; the identity becomes the
   sequence `action_runs_id_seq` (no identity on a partitioned table before PostgreSQL 17),
   past every id issued; the partitioned `action_runs` is created with a DEFAULT partition and
   the next three days, and the old table attached `FROM (MINVALUE) TO (boundary)`, its indexes
   attached, not rebuilt. Rows dated at or after the boundary move through the new table first.

A release still running the old code after the switch cannot enqueue (its insert names no
event_occurred_at: NOT NULL): its apply transaction rolls back and the events are retried by the
new release, which fires their rules once.

**hubspot_api_call_minutes** (a day of rows) is partitioned by `minute` the same way: its key
already holds the partition key, so the old table is attached as is.

Downgrade copies the rows back into plain tables (writes wait meanwhile).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

DAY_MS = 86_400_000
AHEAD = 3
BATCH = 20_000  # a batch holds its rows' locks: the act stage waits at most one batch
LEGACY = "action_runs_legacy"
BOUND = "ck_action_runs_legacy_bound"
KEY_INDEX = "ix_action_runs_legacy_key"
UNFILLED = "ix_action_runs_legacy_unfilled"
# service/partitions.py's mark on a table it detached and has not dropped yet.
DETACHED = "detached from {table} by retention"
OLD_KEY = "portal_id, inbox_id, rule, action_index"
KEY = OLD_KEY + ", event_occurred_at"
COLUMNS = (
    "portal_id, inbox_id, rule, action_index, id, action, object_type, object_id, payload,"
    " status, attempts, next_attempt_at, last_error, result, created_at, done_at"
)
OLD_STATUS_CHECK = "ck_action_runs_ck_action_runs_status"
STATUS_CHECK = "status IN ('pending', 'done', 'failed', 'dead')"
# The secondary indexes (name suffix -> definition), the same on the old and the new table.
INDEXES = {
    "due": "(next_attempt_at) WHERE status IN ('pending', 'failed')",
    "object": "(portal_id, object_id)",
    "id": "(id)",
    "open": "(status) WHERE status <> 'done'",
}
# The firing event's occurredAt; else (its inbox row purged) the run's creation, in ms.
FILL = (
    "UPDATE action_runs a SET event_occurred_at = coalesce("
    "(SELECT i.occurred_at FROM inbox_events i WHERE i.id = a.inbox_id LIMIT 1),"
    " (extract(epoch FROM a.created_at) * 1000)::bigint) WHERE a.event_occurred_at IS NULL"
)
CALLS = "hubspot_api_call_minutes"
CALLS_LEGACY = "hubspot_api_call_minutes_legacy"
CALLS_KEY = "portal_id, minute, endpoint, outcome"
CALLS_COMMENT = "HubSpot API calls per portal, minute, endpoint and outcome (API_LOG_RETENTION)"
CALLS_OLD_COMMENT = "HubSpot API calls per portal, minute, endpoint and outcome (kept a day)"


def _actions_table(name: str, id_column: str, *, partitioned: bool) -> str:
    occurred = "event_occurred_at bigint NOT NULL," if partitioned else ""
    suffix = " PARTITION BY RANGE (event_occurred_at)" if partitioned else ""
    return f"""
        CREATE TABLE {name} (
            portal_id bigint NOT NULL,
            inbox_id bigint NOT NULL,
            rule text NOT NULL,
            action_index integer NOT NULL,
            {occurred}
            id {id_column},
            action text NOT NULL,
            object_type text NOT NULL,
            object_id bigint NOT NULL,
            payload jsonb NOT NULL,
            status text NOT NULL DEFAULT 'pending',
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error text,
            result text,
            created_at timestamptz NOT NULL DEFAULT now(),
            done_at timestamptz
        ){suffix}
    """


def _calls_table(name: str, suffix: str = "") -> str:
    return f"""
        CREATE TABLE {name} (
            portal_id bigint NOT NULL,
            minute timestamptz NOT NULL,
            endpoint text NOT NULL,
            outcome text NOT NULL,
            calls bigint NOT NULL DEFAULT 0
        ){suffix}
    """


def run(sql: str) -> None:
    """Execute one statement on the migration's connection."""
    op.get_bind().execute(sa.text(sql))


def _day(start_ms: int) -> str:
    return datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y%m%d")


def _timestamp(ms: int) -> str:
    return "'" + datetime.fromtimestamp(ms / 1000, UTC).isoformat() + "'"


def _build_concurrently(bind: sa.Connection, name: str, definition: str) -> None:
    invalid = bind.scalar(
        sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
        {"n": name},
    )
    if invalid:  # an interrupted build: start it again
        bind.execute(sa.text(f"DROP INDEX CONCURRENTLY {name}"))
    bind.execute(
        sa.text(f"CREATE {definition.replace('INDEX', 'INDEX CONCURRENTLY IF NOT EXISTS')}")
    )


def _prepare_actions() -> None:
    """Step 1, committed as it goes: the column, its values, the indexes the switch needs."""
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        bind.execute(
            sa.text("ALTER TABLE action_runs ADD COLUMN IF NOT EXISTS event_occurred_at bigint")
        )
        last = int(bind.scalar(sa.text("SELECT coalesce(max(id), 0) FROM action_runs")))
        for low in range(0, last + 1, BATCH):  # short transactions: the act stage goes on
            bind.execute(sa.text(f"{FILL} AND a.id >= {low} AND a.id < {low + BATCH}"))
        _build_concurrently(bind, KEY_INDEX, f"UNIQUE INDEX {KEY_INDEX} ON action_runs ({KEY})")
        _build_concurrently(
            bind, UNFILLED, f"INDEX {UNFILLED} ON action_runs (id) WHERE event_occurred_at IS NULL"
        )


def _upgrade_actions(boundary: int) -> None:
    bind = op.get_bind()
    run("LOCK TABLE action_runs IN ACCESS EXCLUSIVE MODE")
    run(FILL)  # the runs enqueued since step 1: found through the partial index
    run(f"DROP INDEX {UNFILLED}")
    run(f"ALTER TABLE action_runs RENAME TO {LEGACY}")
    run(f"ALTER TABLE {LEGACY} DROP CONSTRAINT pk_action_runs")
    run(f"ALTER TABLE {LEGACY} RENAME CONSTRAINT {OLD_STATUS_CHECK} TO ck_action_runs_status")
    for suffix in INDEXES:
        run(f"ALTER INDEX ix_action_runs_{suffix} RENAME TO ix_{LEGACY}_{suffix}")
    last_id = bind.scalar(
        sa.text(
            "SELECT greatest(pg_sequence_last_value('action_runs_id_seq'),"
            f" (SELECT max(id) FROM {LEGACY}), 0)"
        )
    )
    run(f"ALTER TABLE {LEGACY} ALTER COLUMN id DROP IDENTITY")  # drops action_runs_id_seq
    run(f"CREATE SEQUENCE action_runs_id_seq AS bigint START WITH {int(last_id) + 1}")
    run(
        _actions_table(
            "action_runs",
            "bigint NOT NULL DEFAULT nextval('action_runs_id_seq')",
            partitioned=True,
        )
    )
    run("ALTER SEQUENCE action_runs_id_seq OWNED BY action_runs.id")
    run(f"ALTER TABLE action_runs ADD CONSTRAINT pk_action_runs PRIMARY KEY ({KEY})")
    run(f"ALTER TABLE action_runs ADD CONSTRAINT ck_action_runs_status CHECK ({STATUS_CHECK})")
    run(
        "COMMENT ON COLUMN action_runs.event_occurred_at IS"
        " 'the firing event''s occurredAt, epoch ms (the partition key)'"
    )
    for suffix, definition in INDEXES.items():
        run(f"CREATE INDEX ix_action_runs_{suffix} ON action_runs {definition}")
    run("CREATE TABLE action_runs_default PARTITION OF action_runs DEFAULT")
    for start in range(boundary, boundary + AHEAD * DAY_MS, DAY_MS):
        run(
            f"CREATE TABLE action_runs_p{_day(start)} PARTITION OF action_runs"
            f" FOR VALUES FROM ({start}) TO ({start + DAY_MS})"
        )
    bound = f"CHECK (event_occurred_at IS NOT NULL AND event_occurred_at < {boundary})"
    try:
        with bind.begin_nested():
            run(f"ALTER TABLE {LEGACY} ADD CONSTRAINT {BOUND} {bound}")
    except sa.exc.IntegrityError:  # runs of events dated after the boundary: to the new table
        columns = f"{COLUMNS}, event_occurred_at"
        run(
            f"WITH moved AS (DELETE FROM {LEGACY} WHERE event_occurred_at >= {boundary}"
            f" RETURNING {columns}) INSERT INTO action_runs ({columns}) SELECT * FROM moved"
        )
        run(f"ALTER TABLE {LEGACY} ADD CONSTRAINT {BOUND} {bound}")
    run(f"ALTER TABLE {LEGACY} ALTER COLUMN event_occurred_at SET NOT NULL")  # proven: no scan
    run(f"ALTER TABLE {LEGACY} ADD CONSTRAINT pk_{LEGACY} PRIMARY KEY USING INDEX {KEY_INDEX}")
    run(
        f"ALTER TABLE action_runs ATTACH PARTITION {LEGACY}"
        f" FOR VALUES FROM (MINVALUE) TO ({boundary})"
    )
    run(f"ALTER TABLE {LEGACY} DROP CONSTRAINT {BOUND}")


def _upgrade_calls(boundary: int) -> None:
    run(f"LOCK TABLE {CALLS} IN ACCESS EXCLUSIVE MODE")
    run(f"ALTER TABLE {CALLS} RENAME TO {CALLS_LEGACY}")
    run(f"ALTER TABLE {CALLS_LEGACY} RENAME CONSTRAINT pk_{CALLS} TO pk_{CALLS_LEGACY}")
    run(f"ALTER INDEX ix_{CALLS}_minute RENAME TO ix_{CALLS_LEGACY}_minute")
    run(_calls_table(CALLS, " PARTITION BY RANGE (minute)"))
    run(f"ALTER TABLE {CALLS} ADD CONSTRAINT pk_{CALLS} PRIMARY KEY ({CALLS_KEY})")
    run(f"CREATE INDEX ix_{CALLS}_minute ON {CALLS} (minute)")
    run(f"COMMENT ON TABLE {CALLS} IS '{CALLS_COMMENT}'")
    run(f"CREATE TABLE {CALLS}_default PARTITION OF {CALLS} DEFAULT")
    for start in range(boundary, boundary + AHEAD * DAY_MS, DAY_MS):
        run(
            f"CREATE TABLE {CALLS}_p{_day(start)} PARTITION OF {CALLS}"
            f" FOR VALUES FROM ({_timestamp(start)}) TO ({_timestamp(start + DAY_MS)})"
        )
    # Counted at the database's now(): nothing is dated after the end of today.
    columns = "portal_id, minute, endpoint, outcome, calls"
    run(
        f"WITH moved AS (DELETE FROM {CALLS_LEGACY} WHERE minute >= {_timestamp(boundary)}"
        f" RETURNING {columns}) INSERT INTO {CALLS} ({columns}) SELECT * FROM moved"
    )
    run(
        f"ALTER TABLE {CALLS_LEGACY} ADD CONSTRAINT ck_{CALLS_LEGACY}_bound"
        f" CHECK (minute < {_timestamp(boundary)})"
    )
    run(
        f"ALTER TABLE {CALLS} ATTACH PARTITION {CALLS_LEGACY}"
        f" FOR VALUES FROM (MINVALUE) TO ({_timestamp(boundary)})"
    )
    run(f"ALTER TABLE {CALLS_LEGACY} DROP CONSTRAINT ck_{CALLS_LEGACY}_bound")


def upgrade() -> None:
    _prepare_actions()
    bind = op.get_bind()
    now_ms = int(bind.scalar(sa.text("SELECT extract(epoch FROM now()) * 1000")))
    boundary = (now_ms // DAY_MS + 1) * DAY_MS
    _upgrade_actions(boundary)
    _upgrade_calls(boundary)


def _leftovers(table: str) -> list[str]:
    """Partitions retention detached and has not dropped yet."""
    return list(
        op.get_bind().scalars(
            sa.text(
                "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r'"
                " AND c.relnamespace = current_schema()::regnamespace"
                " AND obj_description(c.oid, 'pg_class') = :mark"
            ),
            {"mark": DETACHED.format(table=table)},
        )
    )


def _downgrade_actions() -> None:
    bind = op.get_bind()
    # No insert may land after the copy's snapshot: it would go with the partitioned table.
    run("LOCK TABLE action_runs IN EXCLUSIVE MODE")
    last_id = bind.scalar(
        sa.text(
            "SELECT greatest(pg_sequence_last_value('action_runs_id_seq'),"
            " (SELECT max(id) FROM action_runs), 0)"
        )
    )
    run(
        _actions_table(
            "action_runs_plain", "bigint GENERATED ALWAYS AS IDENTITY", partitioned=False
        )
    )
    run(
        f"INSERT INTO action_runs_plain ({COLUMNS}) OVERRIDING SYSTEM VALUE"
        f" SELECT {COLUMNS} FROM action_runs"
    )
    leftovers = _leftovers("action_runs")
    run("DROP TABLE action_runs")  # its partitions and its sequence with it
    run("ALTER TABLE action_runs_plain RENAME TO action_runs")
    run("ALTER SEQUENCE action_runs_plain_id_seq RENAME TO action_runs_id_seq")
    run(f"ALTER TABLE action_runs ADD CONSTRAINT pk_action_runs PRIMARY KEY ({OLD_KEY})")
    run(f"ALTER TABLE action_runs ADD CONSTRAINT {OLD_STATUS_CHECK} CHECK ({STATUS_CHECK})")
    for suffix, definition in INDEXES.items():
        run(f"CREATE INDEX ix_action_runs_{suffix} ON action_runs {definition}")
    for name in leftovers:
        run(
            f"INSERT INTO action_runs ({COLUMNS}) OVERRIDING SYSTEM VALUE"
            f" SELECT {COLUMNS} FROM {name} WHERE status IN ('pending', 'failed', 'dead')"
            " ON CONFLICT DO NOTHING"
        )
        run(f"DROP TABLE {name}")
    if last_id:
        run(f"SELECT setval('action_runs_id_seq', {int(last_id)})")


def _downgrade_calls() -> None:
    columns = "portal_id, minute, endpoint, outcome, calls"
    run(f"LOCK TABLE {CALLS} IN EXCLUSIVE MODE")
    run(_calls_table(f"{CALLS}_plain"))
    run(f"INSERT INTO {CALLS}_plain ({columns}) SELECT {columns} FROM {CALLS}")
    leftovers = _leftovers(CALLS)
    run(f"DROP TABLE {CALLS}")
    for name in leftovers:  # retention keeps no call counts: nothing to put back
        run(f"DROP TABLE {name}")
    run(f"ALTER TABLE {CALLS}_plain RENAME TO {CALLS}")
    run(f"ALTER TABLE {CALLS} ADD CONSTRAINT pk_{CALLS} PRIMARY KEY ({CALLS_KEY})")
    run(f"CREATE INDEX ix_{CALLS}_minute ON {CALLS} (minute)")
    run(f"COMMENT ON TABLE {CALLS} IS '{CALLS_OLD_COMMENT}'")


def downgrade() -> None:
    _downgrade_calls()
    _downgrade_actions()
