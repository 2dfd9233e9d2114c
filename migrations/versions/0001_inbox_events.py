"""inbox_events: one row per distinct HubSpot event

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbox_events",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("subscription_id", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("object_id", sa.BigInteger, nullable=False),
        sa.Column(
            "occurred_at", sa.BigInteger, nullable=False, comment="HubSpot occurredAt, epoch ms"
        ),
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("subscription_type", sa.Text, nullable=False),
        sa.Column("signature_version", sa.Text, nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("last_error", sa.Text),
        sa.Column("processed_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint(
            "portal_id",
            "subscription_id",
            "event_id",
            "object_id",
            "occurred_at",
            name="pk_inbox_events",
        ),
        sa.UniqueConstraint("id", name="uq_inbox_events_id"),
        sa.CheckConstraint(
            "status IN ('pending', 'done', 'failed', 'dead', 'ignored')",
            name="ck_inbox_events_status",
        ),
    )
    op.create_index(
        "ix_inbox_events_due",
        "inbox_events",
        ["next_attempt_at"],
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    )
    op.create_index("ix_inbox_events_received_at", "inbox_events", ["received_at"])


def downgrade() -> None:
    op.drop_table("inbox_events")
