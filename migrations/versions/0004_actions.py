"""actions: the action_runs outbox, own_writes (echo suppression), pipeline stage labels

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _ts(name: str, *, default: bool = True) -> sa.Column[object]:
    if default:
        return sa.Column(
            name, sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        )
    return sa.Column(name, sa.DateTime(timezone=True))


def upgrade() -> None:
    op.create_table(
        "action_runs",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("inbox_id", sa.BigInteger, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("action_index", sa.Integer, nullable=False),
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column("object_id", sa.BigInteger, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        _ts("next_attempt_at"),
        sa.Column("last_error", sa.Text),
        sa.Column("result", sa.Text),
        _ts("created_at"),
        _ts("done_at", default=False),
        sa.PrimaryKeyConstraint(
            "portal_id", "inbox_id", "rule", "action_index", name="pk_action_runs"
        ),
        sa.UniqueConstraint("id", name="uq_action_runs_id"),
        sa.CheckConstraint(
            "status IN ('pending', 'done', 'failed', 'dead')", name="ck_action_runs_status"
        ),
    )
    op.create_index(
        "ix_action_runs_due",
        "action_runs",
        ["next_attempt_at"],
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    )
    op.create_index("ix_action_runs_object", "action_runs", ["portal_id", "object_id"])
    op.create_table(
        "own_writes",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column("object_id", sa.BigInteger, nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("portal_id", "object_type", "object_id", name="pk_own_writes"),
    )
    op.create_table(
        "pipeline_stages",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column("stage_id", sa.Text, nullable=False),
        sa.Column("pipeline_id", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        _ts("fetched_at"),
        sa.PrimaryKeyConstraint("portal_id", "object_type", "stage_id", name="pk_pipeline_stages"),
    )


def downgrade() -> None:
    op.drop_table("pipeline_stages")
    op.drop_table("own_writes")
    op.drop_table("action_runs")
