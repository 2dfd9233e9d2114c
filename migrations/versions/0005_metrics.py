"""metrics: worker_heartbeats, and the indexes that keep a /metrics scrape from scanning queues

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The indexes are built CONCURRENTLY, outside the migration's transaction: on a large inbox a
    # plain CREATE INDEX would block ingest (every insert) for as long as the build takes. They
    # come first and are idempotent, so a deploy that fails half-way can simply run again.
    with op.get_context().autocommit_block():
        # Rows not done are few (done is the bulk): counted by an index-only scan of this index.
        op.create_index(
            "ix_inbox_events_open",
            "inbox_events",
            ["status"],
            postgresql_concurrently=True,
            if_not_exists=True,
            postgresql_where=sa.text("status <> 'done'"),
        )
        # The apply lag of the latest processed rows, read from the index alone.
        op.create_index(
            "ix_inbox_events_processed_at",
            "inbox_events",
            ["processed_at"],
            postgresql_include=["received_at"],
            postgresql_concurrently=True,
            if_not_exists=True,
            postgresql_where=sa.text("processed_at IS NOT NULL"),
        )
        op.create_index(
            "ix_hydration_requests_dead",
            "hydration_requests",
            ["requested_at"],
            postgresql_concurrently=True,
            if_not_exists=True,
            postgresql_where=sa.text("status = 'dead'"),
        )
        op.create_index(
            "ix_action_runs_open",
            "action_runs",
            ["status"],
            postgresql_concurrently=True,
            if_not_exists=True,
            postgresql_where=sa.text("status <> 'done'"),
        )
    op.create_table(
        "worker_heartbeats",
        sa.Column("worker_id", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("stages", sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "last_seen_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column(
            "last_batch_at", sa.DateTime(timezone=True), comment="its apply stage's last claim"
        ),
        sa.PrimaryKeyConstraint("worker_id", name="pk_worker_heartbeats"),
    )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table in (
            ("ix_action_runs_open", "action_runs"),
            ("ix_hydration_requests_dead", "hydration_requests"),
            ("ix_inbox_events_processed_at", "inbox_events"),
            ("ix_inbox_events_open", "inbox_events"),
        ):
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
    op.drop_table("worker_heartbeats")
