"""alerts: alert_states, one row per alert condition (firing or ok, last message sent)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _ts(name: str) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    )


def upgrade() -> None:
    op.create_table(
        "alert_states",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="ok"),
        _ts("since"),
        sa.Column("last_sent_at", sa.DateTime(timezone=True)),
        sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("value", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("report", JSONB, comment="what a stage last reported (the scheduled reconcile)"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("key", name="pk_alert_states"),
        sa.CheckConstraint("status IN ('ok', 'firing')", name="ck_alert_states_status"),
    )


def downgrade() -> None:
    op.drop_table("alert_states")
