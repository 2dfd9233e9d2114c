"""api call minutes: HubSpot API calls counted per minute, for windows like "429s in the last 5m"

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hubspot_api_call_minutes",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("portal_id", "minute", "endpoint", "outcome"),
        comment="HubSpot API calls per portal, minute, endpoint and outcome (kept a day)",
    )
    op.create_index("ix_hubspot_api_call_minutes_minute", "hubspot_api_call_minutes", ["minute"])


def downgrade() -> None:
    op.drop_table("hubspot_api_call_minutes")
