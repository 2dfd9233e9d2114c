"""the mirror: crm_objects, crm_associations, hydration_requests and the documented views

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NUMERIC = r"'^\s*-?[0-9]+(\.[0-9]+)?\s*$'"


def _numeric(prop: str) -> str:
    # A safe cast: a malformed value reads as NULL instead of failing the whole query.
    return (
        f"CASE WHEN properties->>'{prop}' ~ {NUMERIC}"
        f" THEN (properties->>'{prop}')::numeric END AS {prop}"
    )


def _view(name: str, object_type: str, columns: list[str]) -> str:
    typed = ",\n       ".join(columns)
    return f"""
CREATE VIEW {name} AS
SELECT portal_id, object_id, properties, archived, merged_into, erased, first_seen, updated_at,
       {typed}
FROM crm_objects
WHERE object_type = '{object_type}'
"""


VIEWS = {
    "hubspot_contacts": _view(
        "hubspot_contacts",
        "contacts",
        [
            "properties->>'email' AS email",
            "properties->>'firstname' AS firstname",
            "properties->>'lastname' AS lastname",
            "properties->>'lifecyclestage' AS lifecyclestage",
            "properties->>'hubspot_owner_id' AS hubspot_owner_id",
        ],
    ),
    "hubspot_companies": _view(
        "hubspot_companies",
        "companies",
        [
            "properties->>'name' AS name",
            "properties->>'domain' AS domain",
            _numeric("numberofemployees"),
            "properties->>'hubspot_owner_id' AS hubspot_owner_id",
        ],
    ),
    "hubspot_deals": _view(
        "hubspot_deals",
        "deals",
        [
            "properties->>'dealname' AS dealname",
            "properties->>'dealstage' AS dealstage",
            _numeric("amount"),
            "properties->>'pipeline' AS pipeline",
            "properties->>'closedate' AS closedate",
            "properties->>'hubspot_owner_id' AS hubspot_owner_id",
        ],
    ),
    # Associations as they stand now: merged-away ids resolve to their last survivor (following
    # chains of merges), and of the rows that resolve to one association the latest decision (by
    # occurredAt) wins; at the same instant removal wins and a primary row is preferred.
    "hubspot_associations": """
CREATE VIEW hubspot_associations AS
WITH RECURSIVE chain (portal_id, object_type, object_id, survivor, depth) AS (
    SELECT portal_id, object_type, object_id, merged_into, 1
    FROM crm_objects WHERE merged_into IS NOT NULL
    UNION ALL
    SELECT c.portal_id, c.object_type, c.object_id, o.merged_into, c.depth + 1
    FROM chain c
    JOIN crm_objects o
      ON o.portal_id = c.portal_id AND o.object_type = c.object_type AND o.object_id = c.survivor
    WHERE o.merged_into IS NOT NULL AND c.depth < 16
),
last_survivor AS (
    SELECT DISTINCT ON (portal_id, object_type, object_id) portal_id, object_type, object_id, survivor
    FROM chain
    ORDER BY portal_id, object_type, object_id, depth DESC
),
resolved AS (
    SELECT a.portal_id,
           a.from_type,
           coalesce(f.survivor, a.from_id) AS from_id,
           a.to_type,
           coalesce(t.survivor, a.to_id) AS to_id,
           a.association_type,
           a.is_primary,
           a.present,
           a.version,
           a.updated_at,
           a.from_id AS raw_from_id,
           a.to_id AS raw_to_id
    FROM crm_associations a
    LEFT JOIN last_survivor f
           ON f.portal_id = a.portal_id AND f.object_type = a.from_type AND f.object_id = a.from_id
    LEFT JOIN last_survivor t
           ON t.portal_id = a.portal_id AND t.object_type = a.to_type AND t.object_id = a.to_id
),
latest AS (
    SELECT DISTINCT ON (portal_id, from_type, from_id, to_type, to_id, association_type) *
    FROM resolved
    ORDER BY portal_id, from_type, from_id, to_type, to_id, association_type,
             version DESC, present ASC, is_primary DESC, raw_from_id, raw_to_id
)
SELECT portal_id, from_type, from_id, to_type, to_id, association_type, is_primary, updated_at
FROM latest
WHERE present
  AND NOT (from_type = to_type AND from_id = to_id)
""",
}


def upgrade() -> None:
    op.create_index("ix_inbox_events_object", "inbox_events", ["portal_id", "object_id"])
    op.create_table(
        "crm_objects",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column("object_id", sa.BigInteger, nullable=False),
        sa.Column("properties", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column(
            "versions",
            JSONB,
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
            comment="property name -> occurredAt ms of the value held",
        ),
        sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("archived_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("merged_into", sa.BigInteger),
        sa.Column("merged_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("erased", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("erased_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column(
            "first_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("portal_id", "object_type", "object_id", name="pk_crm_objects"),
    )
    op.create_index(
        "ix_crm_objects_erased",
        "crm_objects",
        ["portal_id", "object_type", "object_id"],
        postgresql_where=sa.text("erased"),
    )
    op.create_table(
        "crm_associations",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("from_type", sa.Text, nullable=False),
        sa.Column("from_id", sa.BigInteger, nullable=False),
        sa.Column("to_type", sa.Text, nullable=False),
        sa.Column("to_id", sa.BigInteger, nullable=False),
        sa.Column("association_type", sa.Text, nullable=False),
        sa.Column("present", sa.Boolean, nullable=False),
        sa.Column("is_primary", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint(
            "portal_id",
            "from_type",
            "from_id",
            "to_type",
            "to_id",
            "association_type",
            name="pk_crm_associations",
        ),
    )
    op.create_table(
        "hydration_requests",
        sa.Column("portal_id", sa.BigInteger, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column("object_id", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column(
            "requested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("last_error", sa.Text),
        sa.PrimaryKeyConstraint(
            "portal_id", "object_type", "object_id", name="pk_hydration_requests"
        ),
    )
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("hydration_requests")
    op.drop_table("crm_associations")
    op.drop_table("crm_objects")
    op.drop_index("ix_inbox_events_object", table_name="inbox_events")
