"""applied changes: which inbox row owns each CRM change, so rules fire once per change when
events arrive by webhook and by journal

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-10

`applied_changes` (service/changes.py) keys a change by (portal_id, change_key, occurred_at) and
names the inbox row that claimed it first. Partitioned by day of occurred_at like inbox_events,
with the same layout as the inbox and the action runs after their migrations: one partition for
everything before today (retention drops it once today is older than INBOX_RETENTION), today,
the next three days and a DEFAULT partition; service/partitions.py keeps the layout afterwards.
A new table: nothing running waits on it.

Downgrade drops the table, its partitions and any partition retention detached and has not
dropped yet (nothing in them is kept).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TABLE = "applied_changes"
DAY_MS = 86_400_000
AHEAD = 3
# service/partitions.py's mark on a table it detached and has not dropped yet.
DETACHED = "detached from {table} by retention"


def run(sql: str) -> None:
    """Execute one statement on the migration's connection."""
    op.get_bind().execute(sa.text(sql))


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column(
            "change_key", sa.BigInteger, nullable=False, comment="events.change_key, 63 bits"
        ),
        sa.Column(
            "occurred_at", sa.BigInteger, nullable=False, comment="HubSpot occurredAt, epoch ms"
        ),
        sa.Column("inbox_id", sa.BigInteger, nullable=False, comment="the inbox row that owns it"),
        sa.Column(
            "claimed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.PrimaryKeyConstraint(
            "portal_id", "change_key", "occurred_at", name=op.f("pk_applied_changes")
        ),
        postgresql_partition_by="RANGE (occurred_at)",
    )
    run(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
    now_ms = int(op.get_bind().scalar(sa.text("SELECT extract(epoch FROM now()) * 1000")))
    today = now_ms // DAY_MS * DAY_MS
    run(f"CREATE TABLE {TABLE}_past PARTITION OF {TABLE} FOR VALUES FROM (MINVALUE) TO ({today})")
    for start in range(today, today + (AHEAD + 1) * DAY_MS, DAY_MS):
        day = datetime.fromtimestamp(start / 1000, UTC).strftime("%Y%m%d")
        run(
            f"CREATE TABLE {TABLE}_p{day} PARTITION OF {TABLE}"
            f" FOR VALUES FROM ({start}) TO ({start + DAY_MS})"
        )


def downgrade() -> None:
    leftovers = op.get_bind().scalars(
        sa.text(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r'"
            " AND c.relnamespace = current_schema()::regnamespace"
            " AND obj_description(c.oid, 'pg_class') = :mark"
        ),
        {"mark": DETACHED.format(table=TABLE)},
    )
    for name in list(leftovers):
        run(f"DROP TABLE {name}")
    op.drop_table(TABLE)  # its partitions with it
