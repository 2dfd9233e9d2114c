"""alert pending: messages of alert_states sent directly (no_worker), held until delivered

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "alert_states",
        sa.Column(
            "pending",
            JSONB,
            nullable=False,
            server_default=sa.text("'[]'::jsonb"),
            comment="messages sent directly (no_worker) and not yet delivered",
        ),
    )
    op.add_column(
        "alert_states",
        sa.Column("pending_until", sa.DateTime(timezone=True), comment="a delivery's lease"),
    )


def downgrade() -> None:
    op.drop_column("alert_states", "pending_until")
    op.drop_column("alert_states", "pending")
