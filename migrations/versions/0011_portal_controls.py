"""portal controls: pausing a portal's processing; the index of the fair claim

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

`portal_controls` holds each paused portal (service/portals.py). The fair claim (service/inbox.py)
finds the portals with due rows by a loose index scan and takes a share of each from
`ix_inbox_events_due_by_portal`: (portal_id, next_attempt_at, id) of the pending and failed rows.

inbox_events is partitioned (0010). CREATE INDEX CONCURRENTLY is not supported on a partitioned
parent, and a plain CREATE INDEX on it would hold a SHARE lock on every partition while it
builds, so ingest would wait (and answer 503) for the whole build. Instead, as PostgreSQL's
documentation describes for partitioned tables:

1. Outside the migration's transaction, each partition's index is built CONCURRENTLY: ingest goes
   on meanwhile. An invalid index a failed build left is dropped and built again.
2. In one short transaction, the table is locked (it and its partitions, before any index, so
   no worker's claim can hold an index lock the attach waits for: that deadlocked), the parent's
   index is created ON ONLY the parent (no build, invalid until complete), a partition created
   since step 1 (new partitions are empty) gets its index there, and each partition's index is
   attached; once all are, the parent's index is valid. Ingest waits for milliseconds, never
   for a build.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEX = "ix_inbox_events_due_by_portal"
DEFINITION = "(portal_id, next_attempt_at, id) WHERE status IN ('pending', 'failed')"

_PARTITIONS = sa.text(
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'inbox_events'::regclass ORDER BY c.relname"
)
_INVALID = sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)")


def _partition_index(partition: str) -> str:
    return f"ix_{partition}_due_by_portal"


def upgrade() -> None:
    op.create_table(
        "portal_controls",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column(
            "paused_at",
            sa.DateTime(timezone=True),
            comment="paused since; NULL: running",
        ),
        sa.Column("reason", sa.Text, comment="why, as the operator who paused it said"),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.PrimaryKeyConstraint("portal_id", name="pk_portal_controls"),
    )
    # Commit the table before the index builds: CONCURRENTLY cannot run in a transaction.
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        partitioned = bind.scalar(
            sa.text("SELECT relkind = 'p' FROM pg_class WHERE oid = 'inbox_events'::regclass")
        )
        targets = list(bind.scalars(_PARTITIONS)) if partitioned else ["inbox_events"]
        for table in targets:
            name = _partition_index(table) if partitioned else INDEX
            if bind.scalar(_INVALID, {"name": name}):
                bind.execute(sa.text(f'DROP INDEX CONCURRENTLY "{name}"'))
            bind.execute(
                sa.text(
                    f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" {DEFINITION}'
                )
            )
    if not partitioned:
        return
    bind = op.get_bind()
    # The table (and with it every partition) first, before any of their indexes: a claim locks
    # the table, then its indexes, so taking an index's lock first could deadlock with a worker
    # of the running release. Held for milliseconds (no build), within env.py's lock_timeout.
    bind.execute(sa.text("LOCK TABLE inbox_events IN ACCESS EXCLUSIVE MODE"))
    bind.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {INDEX} ON ONLY inbox_events {DEFINITION}"))
    for partition in bind.scalars(_PARTITIONS).all():
        name = _partition_index(partition)
        bind.execute(sa.text(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{partition}" {DEFINITION}'))
        bind.execute(sa.text(f'ALTER INDEX {INDEX} ATTACH PARTITION "{name}"'))


def downgrade() -> None:
    op.drop_index(INDEX, table_name="inbox_events")  # its partitions' indexes with it
    op.drop_table("portal_controls")
