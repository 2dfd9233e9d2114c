"""HubSpot API state: OAuth tokens, shared rate limits, call counts, reconcile checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.add_column(
        "hydration_requests",
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    )
    op.create_check_constraint(
        op.f("ck_hydration_requests_status"),
        "hydration_requests",
        "status IN ('pending', 'dead')",
    )
    op.create_index(
        "ix_hydration_requests_due",
        "hydration_requests",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "hubspot_tokens",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("access_token", sa.Text, nullable=False),
        sa.Column("refresh_token", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False, server_default=""),
        sa.Column("needs_reinstall", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("last_error", sa.Text),
        sa.Column(
            "installed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("portal_id", name="pk_hubspot_tokens"),
    )
    op.create_table(
        "rate_limits",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("max_calls", sa.Integer, nullable=False),
        sa.Column("window_ms", sa.Integer, nullable=False),
        sa.Column("calls", sa.ARRAY(sa.BigInteger), nullable=False, server_default="{}"),
        sa.Column("blocked_until_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("portal_id", "bucket", name="pk_rate_limits"),
    )
    op.create_table(
        "hubspot_api_calls",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("portal_id", "endpoint", "outcome", name="pk_hubspot_api_calls"),
    )
    op.create_table(
        "reconcile_checkpoints",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column(
            "cursor_ms", sa.BigInteger, nullable=False, comment="last modified time fully read"
        ),
        sa.Column("run_started_at", sa.DateTime(timezone=True)),
        sa.Column("run_since_ms", sa.BigInteger),
        sa.Column("last_success_at", sa.DateTime(timezone=True)),
        sa.Column("last_success_since_ms", sa.BigInteger),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("portal_id", "object_type", name="pk_reconcile_checkpoints"),
    )
    op.create_table(
        "seen_properties",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column("property", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("portal_id", "object_type", "property", name="pk_seen_properties"),
    )
    # Properties already in the mirror count as seen.
    op.execute(
        """
        INSERT INTO seen_properties (portal_id, object_type, property)
        SELECT DISTINCT portal_id, object_type, jsonb_object_keys(properties) FROM crm_objects
        ON CONFLICT DO NOTHING
        """
    )


def downgrade() -> None:
    op.drop_table("seen_properties")
    op.drop_table("reconcile_checkpoints")
    op.drop_table("hubspot_api_calls")
    op.drop_table("rate_limits")
    op.drop_table("hubspot_tokens")
    op.drop_index("ix_hydration_requests_due", table_name="hydration_requests")
    op.drop_column("hydration_requests", "status")
