"""action runs id index: a plain index on action_runs.id instead of UNIQUE (id)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

Every unique index of a table distributed by portal_id must include portal_id (Citus enforces
uniqueness per shard; tests/test_distribution.py keeps the schema so), and a table partitioned
by time later cannot keep a unique index without its partition key either. The id comes from
the table's identity, so it stays unique without the constraint; lookups by id (an operator's
`actions show`, replay by id, the admin) use the plain index. It is built CONCURRENTLY before
the constraint goes, so neither step blocks the act stage for a build.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_action_runs_id",
            "action_runs",
            ["id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
    op.drop_constraint("uq_action_runs_id", "action_runs", type_="unique")


def downgrade() -> None:
    op.create_unique_constraint("uq_action_runs_id", "action_runs", ["id"])
    op.drop_index("ix_action_runs_id", table_name="action_runs")
