"""partitioned inbox: inbox_events partitioned by occurred_at, one range a day, plus a default;
every existing row kept, the old table attached as the first partition

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

How the old table becomes a partition without being copied (service/partitions.py keeps the
layout afterwards: partitions ahead, retention):

1. Outside the migration's transaction, `CREATE INDEX CONCURRENTLY` builds the plain index on
   `id` the partitioned table needs (a unique index must include the partition key, so UNIQUE
   (id) cannot stay): ingest goes on while it builds, and ATTACH reuses it.
2. In one transaction: the table is renamed `inbox_events_legacy` (ACCESS EXCLUSIVE on it until
   the commit), its indexes renamed, its identity replaced by the sequence `inbox_events_id_seq`
   (identity columns are not allowed on partitioned tables before PostgreSQL 17) starting past
   every id ever issued, the partitioned `inbox_events` created with the same columns,
   constraints and indexes, with a DEFAULT partition and the next three days' partitions.
3. A validated `CHECK (occurred_at < boundary)` (the end of the current day) proves the old rows
   fit `FROM (MINVALUE) TO (boundary)`, so ATTACH does not scan again; its indexes are attached,
   not rebuilt. That check is the one scan made under the lock. Rows dated at or after the
   boundary (a sender's clock ahead) are moved through the new table first.

The check is not added NOT VALID and validated before the transaction, which would take the scan
out of the lock: on the live table it would refuse every event dated after the boundary, and a
migration failing after it (a lock timeout) would leave ingest answering 503 from the next day on.
Downgrade copies the rows back into a plain table (writes wait meanwhile).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

DAY_MS = 86_400_000
AHEAD = 3
LEGACY = "inbox_events_legacy"
BOUND = "ck_inbox_events_legacy_bound"
DETACHED = "detached from inbox_events"  # service/partitions.py's mark on a table it is dropping
COLUMNS = (
    "portal_id, subscription_id, event_id, object_id, occurred_at, id, subscription_type,"
    " signature_version, received_at, payload, status, attempts, next_attempt_at, last_error,"
    " processed_at"
)
KEY = "portal_id, subscription_id, event_id, object_id, occurred_at"
OLD_STATUS_CHECK = "ck_inbox_events_ck_inbox_events_status"
STATUS_CHECK = "status IN ('pending', 'done', 'failed', 'dead', 'ignored')"
# The secondary indexes (name suffix -> definition), the same on the old and the new table.
INDEXES = {
    "due": "(next_attempt_at) WHERE status IN ('pending', 'failed')",
    "received_at": "(received_at)",
    "object": "(portal_id, object_id)",
    "open": "(status) WHERE status <> 'done'",
    "processed_at": "(processed_at) INCLUDE (received_at) WHERE processed_at IS NOT NULL",
}


def _table(name: str, id_column: str, suffix: str = "") -> str:
    return f"""
        CREATE TABLE {name} (
            portal_id bigint NOT NULL,
            subscription_id bigint NOT NULL,
            event_id bigint NOT NULL,
            object_id bigint NOT NULL,
            occurred_at bigint NOT NULL,
            id {id_column},
            subscription_type text NOT NULL,
            signature_version text NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            payload jsonb NOT NULL,
            status text NOT NULL DEFAULT 'pending',
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error text,
            processed_at timestamptz
        ){suffix}
    """


def run(sql: str) -> None:
    """Execute one statement on the migration's connection."""
    op.get_bind().execute(sa.text(sql))


def _partition_name(start_ms: int) -> str:
    return "inbox_events_p" + datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y%m%d")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        invalid = bind.scalar(
            sa.text(
                "SELECT NOT indisvalid FROM pg_index"
                " WHERE indexrelid = to_regclass('ix_inbox_events_legacy_id')"
            )
        )
        if invalid:  # an interrupted build: start it again
            bind.execute(sa.text("DROP INDEX CONCURRENTLY ix_inbox_events_legacy_id"))
        bind.execute(
            sa.text(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_inbox_events_legacy_id"
                " ON inbox_events (id)"
            )
        )

    bind = op.get_bind()
    now_ms = int(bind.scalar(sa.text("SELECT extract(epoch FROM now()) * 1000")))
    boundary = (now_ms // DAY_MS + 1) * DAY_MS

    run(f"ALTER TABLE inbox_events RENAME TO {LEGACY}")
    run(f"ALTER TABLE {LEGACY} RENAME CONSTRAINT pk_inbox_events TO pk_{LEGACY}")
    run(f"ALTER TABLE {LEGACY} DROP CONSTRAINT uq_inbox_events_id")
    # ATTACH matches CHECK constraints by name: 0001's got the naming convention twice.
    run(f"ALTER TABLE {LEGACY} RENAME CONSTRAINT {OLD_STATUS_CHECK} TO ck_inbox_events_status")
    for suffix in INDEXES:
        run(f"ALTER INDEX ix_inbox_events_{suffix} RENAME TO ix_{LEGACY}_{suffix}")
    # Past every id ever issued, not only the largest kept: a purged row's id may still be
    # named by action_runs.inbox_id and must never be handed out again.
    last_id = bind.scalar(
        sa.text(
            f"SELECT greatest(pg_sequence_last_value('inbox_events_id_seq'),"
            f" (SELECT max(id) FROM {LEGACY}), 0)"
        )
    )
    run(f"ALTER TABLE {LEGACY} ALTER COLUMN id DROP IDENTITY")  # drops inbox_events_id_seq
    run(f"CREATE SEQUENCE inbox_events_id_seq AS bigint START WITH {int(last_id) + 1}")
    run(
        _table(
            "inbox_events",
            "bigint NOT NULL DEFAULT nextval('inbox_events_id_seq')",
            " PARTITION BY RANGE (occurred_at)",
        )
    )
    run("ALTER SEQUENCE inbox_events_id_seq OWNED BY inbox_events.id")
    run(f"ALTER TABLE inbox_events ADD CONSTRAINT pk_inbox_events PRIMARY KEY ({KEY})")
    run(f"ALTER TABLE inbox_events ADD CONSTRAINT ck_inbox_events_status CHECK ({STATUS_CHECK})")
    run("COMMENT ON COLUMN inbox_events.occurred_at IS 'HubSpot occurredAt, epoch ms'")
    run("CREATE INDEX ix_inbox_events_id ON inbox_events (id)")
    for suffix, definition in INDEXES.items():
        run(f"CREATE INDEX ix_inbox_events_{suffix} ON inbox_events {definition}")
    run("CREATE TABLE inbox_events_default PARTITION OF inbox_events DEFAULT")
    for start in range(boundary, boundary + AHEAD * DAY_MS, DAY_MS):
        run(
            f"CREATE TABLE {_partition_name(start)} PARTITION OF inbox_events"
            f" FOR VALUES FROM ({start}) TO ({start + DAY_MS})"
        )

    try:
        with bind.begin_nested():
            run(f"ALTER TABLE {LEGACY} ADD CONSTRAINT {BOUND} CHECK (occurred_at < {boundary})")
    except sa.exc.IntegrityError:  # rows dated after the boundary: they go to the new table
        run(
            f"WITH moved AS (DELETE FROM {LEGACY} WHERE occurred_at >= {boundary}"
            f" RETURNING {COLUMNS}) INSERT INTO inbox_events ({COLUMNS}) SELECT * FROM moved"
        )
        run(f"ALTER TABLE {LEGACY} ADD CONSTRAINT {BOUND} CHECK (occurred_at < {boundary})")
    run(
        f"ALTER TABLE inbox_events ATTACH PARTITION {LEGACY}"
        f" FOR VALUES FROM (MINVALUE) TO ({boundary})"
    )
    run(f"ALTER TABLE {LEGACY} DROP CONSTRAINT {BOUND}")


def downgrade() -> None:
    bind = op.get_bind()
    # No insert may land after the copy's snapshot: it would go with the partitioned table.
    run("LOCK TABLE inbox_events IN EXCLUSIVE MODE")
    last_id = bind.scalar(
        sa.text(
            "SELECT greatest(pg_sequence_last_value('inbox_events_id_seq'),"
            " (SELECT max(id) FROM inbox_events), 0)"
        )
    )
    run(_table("inbox_events_plain", "bigint GENERATED ALWAYS AS IDENTITY"))
    run(
        f"INSERT INTO inbox_events_plain ({COLUMNS}) OVERRIDING SYSTEM VALUE"
        f" SELECT {COLUMNS} FROM inbox_events"
    )
    # Partitions retention detached and has not dropped yet: the rows it would have kept.
    leftovers = bind.scalars(
        sa.text(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r'"
            " AND c.relnamespace = current_schema()::regnamespace"
            " AND obj_description(c.oid, 'pg_class') LIKE :mark"
        ),
        {"mark": DETACHED + "%"},
    ).all()
    run("DROP TABLE inbox_events")  # its partitions and its sequence with it
    run("ALTER TABLE inbox_events_plain RENAME TO inbox_events")
    run("ALTER SEQUENCE inbox_events_plain_id_seq RENAME TO inbox_events_id_seq")
    run(f"ALTER TABLE inbox_events ADD CONSTRAINT pk_inbox_events PRIMARY KEY ({KEY})")
    run("ALTER TABLE inbox_events ADD CONSTRAINT uq_inbox_events_id UNIQUE (id)")
    run(f"ALTER TABLE inbox_events ADD CONSTRAINT {OLD_STATUS_CHECK} CHECK ({STATUS_CHECK})")
    run("COMMENT ON COLUMN inbox_events.occurred_at IS 'HubSpot occurredAt, epoch ms'")
    for suffix, definition in INDEXES.items():
        run(f"CREATE INDEX ix_inbox_events_{suffix} ON inbox_events {definition}")
    for name in leftovers:
        run(
            f"INSERT INTO inbox_events ({COLUMNS}) OVERRIDING SYSTEM VALUE"
            f" SELECT {COLUMNS} FROM {name} WHERE status IN ('pending', 'failed', 'dead')"
            " ON CONFLICT DO NOTHING"
        )
        run(f"DROP TABLE {name}")
    if last_id:
        run(f"SELECT setval('inbox_events_id_seq', {int(last_id)})")
