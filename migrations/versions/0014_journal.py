"""journal: the Webhooks Journal reader's cursors, entries (files kept) and gaps

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-10

`journal_cursors` holds where each journal's reader got to (moved by compare-and-set in the
transaction that stores an entry's events), `journal_entries` every entry read with its file
(gzip, kept for `journal replay` until INBOX_RETENTION) and whether it parsed, `journal_gaps`
each time a journal fell behind what HubSpot keeps and whether the missed window was reconciled.
Owned by service/journal.py. New tables only: nothing running waits on them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _now(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "journal_cursors",
        sa.Column("journal", sa.Text, nullable=False, comment="global, or local:<portal id>"),
        sa.Column("current_offset", sa.Text),
        sa.Column("entry_at", sa.DateTime(timezone=True)),
        sa.Column("last_event_ms", sa.BigInteger, comment="the latest occurredAt stored"),
        sa.Column("latest_offset", sa.Text),
        sa.Column("behind", sa.Integer, comment="entries after the cursor at the last check"),
        sa.Column("checked_at", sa.DateTime(timezone=True)),
        sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", sa.DateTime(timezone=True)),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("journal"),
    )
    op.create_table(
        "journal_entries",
        sa.Column("journal", sa.Text, nullable=False),
        sa.Column("entry_offset", sa.Text, nullable=False),
        _now("fetched_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("file", sa.LargeBinary, comment="gzip"),
        sa.Column("file_bytes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("events", sa.Integer, nullable=False, server_default="0"),
        sa.Column("stored", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
        sa.Column("contacts", sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("journal", "entry_offset"),
        sa.CheckConstraint("status IN ('stored', 'failed')", name="status"),
    )
    op.create_index("ix_journal_entries_fetched_at", "journal_entries", ["fetched_at"])
    op.create_index(
        "ix_journal_entries_contacts", "journal_entries", ["contacts"], postgresql_using="gin"
    )
    op.create_table(
        "journal_gaps",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("journal", sa.Text, nullable=False),
        _now("detected_at"),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("since_ms", sa.BigInteger),
        sa.Column("until_ms", sa.BigInteger),
        sa.Column("from_offset", sa.Text),
        sa.Column("to_offset", sa.Text),
        sa.Column("reconciled_at", sa.DateTime(timezone=True)),
        sa.Column("reconcile_error", sa.Text),
        sa.CheckConstraint("reason IN ('offset_expired', 'file_expired')", name="reason"),
    )


def downgrade() -> None:
    op.drop_table("journal_gaps")
    op.drop_index("ix_journal_entries_contacts", table_name="journal_entries")
    op.drop_index("ix_journal_entries_fetched_at", table_name="journal_entries")
    op.drop_table("journal_entries")
    op.drop_table("journal_cursors")
