"""All tables, one MetaData. Every key starts with portal_id (see DESIGN.md, "Storage")."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _now_column(name: str) -> sa.Column[object]:
    """A required timestamptz column that defaults to the time of the insert."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


INBOX_STATUSES = ("pending", "done", "failed", "dead", "ignored")

# One row per distinct HubSpot event; the primary key is the dedupe key: eventId scoped by the
# event's identity, never attemptNumber (HUBSPOT.md §2); missing ids are stored as 0. Partitioned
# by day of occurred_at (a key column: a retry meets its first delivery in the same partition;
# service/partitions.py). `id` comes from a sequence (no identity on partitioned tables before
# PG 17), indexed, not unique (a unique index must include the partition key).
inbox_events = sa.Table(
    "inbox_events",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("subscription_id", sa.BigInteger, nullable=False),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("object_id", sa.BigInteger, nullable=False),
    sa.Column("occurred_at", sa.BigInteger, nullable=False, comment="HubSpot occurredAt, epoch ms"),
    sa.Column(
        "id",
        sa.BigInteger,
        sa.Sequence("inbox_events_id_seq"),
        nullable=False,
        server_default=sa.text("nextval('inbox_events_id_seq'::regclass)"),
    ),
    sa.Column("subscription_type", sa.Text, nullable=False),
    sa.Column("signature_version", sa.Text, nullable=False),
    _now_column("received_at"),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    _now_column("next_attempt_at"),
    sa.Column("last_error", sa.Text),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
    sa.PrimaryKeyConstraint("portal_id", "subscription_id", "event_id", "object_id", "occurred_at"),
    sa.CheckConstraint("status IN ('pending', 'done', 'failed', 'dead', 'ignored')", name="status"),
    sa.Index("ix_inbox_events_id", "id"),
    sa.Index(
        "ix_inbox_events_due",
        "next_attempt_at",
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    ),
    sa.Index("ix_inbox_events_received_at", "received_at"),
    sa.Index("ix_inbox_events_object", "portal_id", "object_id"),
    # For /metrics: counts of the rows not done (few, unlike done) by an index-only scan, and
    # the apply lag of the latest processed rows without reading the table.
    sa.Index("ix_inbox_events_open", "status", postgresql_where=sa.text("status <> 'done'")),
    sa.Index(
        "ix_inbox_events_processed_at",
        "processed_at",
        postgresql_include=["received_at"],
        postgresql_where=sa.text("processed_at IS NOT NULL"),
    ),
    postgresql_partition_by="RANGE (occurred_at)",
)

# The mirror: one row per CRM record. Every field is a last-writer-wins register whose version
# is HubSpot's occurredAt (ms), so applying events in any order, any number of times, converges.
crm_objects = sa.Table(
    "crm_objects",
    metadata,
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
    _now_column("first_seen"),
    _now_column("updated_at"),
    sa.PrimaryKeyConstraint("portal_id", "object_type", "object_id"),
    # Every batch asks "is any of these contacts erased?": this index holds only the few that are.
    sa.Index(
        "ix_crm_objects_erased",
        "portal_id",
        "object_type",
        "object_id",
        postgresql_where=sa.text("erased"),
    ),
)

crm_associations = sa.Table(
    "crm_associations",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("from_type", sa.Text, nullable=False),
    sa.Column("from_id", sa.BigInteger, nullable=False),
    sa.Column("to_type", sa.Text, nullable=False),
    sa.Column("to_id", sa.BigInteger, nullable=False),
    sa.Column("association_type", sa.Text, nullable=False),
    sa.Column("present", sa.Boolean, nullable=False),
    sa.Column("is_primary", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("version", sa.BigInteger, nullable=False),
    _now_column("updated_at"),
    sa.PrimaryKeyConstraint(
        "portal_id", "from_type", "from_id", "to_type", "to_id", "association_type"
    ),
)

# One row per record to fetch from HubSpot, however many events ask for it.
hydration_requests = sa.Table(
    "hydration_requests",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("object_type", sa.Text, nullable=False),
    sa.Column("object_id", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    _now_column("requested_at"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    _now_column("next_attempt_at"),
    sa.Column("last_error", sa.Text),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.PrimaryKeyConstraint("portal_id", "object_type", "object_id"),
    sa.CheckConstraint("status IN ('pending', 'dead')", name="status"),
    sa.Index(
        "ix_hydration_requests_due",
        "next_attempt_at",
        postgresql_where=sa.text("status = 'pending'"),
    ),
    sa.Index(
        "ix_hydration_requests_dead", "requested_at", postgresql_where=sa.text("status = 'dead'")
    ),
)

# Per-portal OAuth tokens of a public app (a private app's token comes from the environment).
hubspot_tokens = sa.Table(
    "hubspot_tokens",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("access_token", sa.Text, nullable=False),
    sa.Column("refresh_token", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False, server_default=""),
    sa.Column("needs_reinstall", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("last_error", sa.Text),
    _now_column("installed_at"),
    _now_column("updated_at"),
    sa.PrimaryKeyConstraint("portal_id"),
)

# The OAuth installs in progress (service/hubspot/installs.py): each /oauth/install's state,
# single-use, bound to the browser that asked by a cookie. Only hashes are kept. The one table
# keyed without portal_id: the portal is unknown until HubSpot's callback names it.
oauth_states = sa.Table(
    "oauth_states",
    metadata,
    sa.Column("state_hash", sa.Text, nullable=False, comment="sha256 of the state, hex"),
    sa.Column("browser_hash", sa.Text, nullable=False, comment="sha256 of the install cookie"),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    _now_column("created_at"),
    sa.PrimaryKeyConstraint("state_hash"),
    sa.Index("ix_oauth_states_expires_at", "expires_at"),
)

# Sliding-window rate limit state shared by every worker: the start times of the calls made in
# the current window, per portal and bucket ("api", "search").
rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("bucket", sa.Text, nullable=False),
    sa.Column("max_calls", sa.Integer, nullable=False),
    sa.Column("window_ms", sa.Integer, nullable=False),
    sa.Column("calls", sa.ARRAY(sa.BigInteger), nullable=False, server_default="{}"),
    sa.Column("blocked_until_ms", sa.BigInteger, nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint("portal_id", "bucket"),
)

# Every HubSpot API call, counted by portal, endpoint and outcome.
hubspot_api_calls = sa.Table(
    "hubspot_api_calls",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("calls", sa.BigInteger, nullable=False, server_default="0"),
    _now_column("last_at"),
    sa.PrimaryKeyConstraint("portal_id", "endpoint", "outcome"),
)

# The same calls per minute, so windows ("429s in the last 5 minutes") are one indexed range.
hubspot_api_call_minutes = sa.Table(
    "hubspot_api_call_minutes",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("calls", sa.BigInteger, nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint("portal_id", "minute", "endpoint", "outcome"),
    sa.Index("ix_hubspot_api_call_minutes_minute", "minute"),
    comment="HubSpot API calls per portal, minute, endpoint and outcome (API_LOG_RETENTION)",
    postgresql_partition_by="RANGE (minute)",
)

# Where an incremental reconcile of (portal, object type) got to, so an interrupted run resumes.
reconcile_checkpoints = sa.Table(
    "reconcile_checkpoints",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("object_type", sa.Text, nullable=False),
    sa.Column("cursor_ms", sa.BigInteger, nullable=False, comment="last modified time fully read"),
    sa.Column("run_started_at", sa.DateTime(timezone=True)),
    sa.Column("run_since_ms", sa.BigInteger),
    sa.Column("last_success_at", sa.DateTime(timezone=True)),
    sa.Column("last_success_since_ms", sa.BigInteger),
    _now_column("updated_at"),
    sa.PrimaryKeyConstraint("portal_id", "object_type"),
)

# Property names HubSpot has sent in webhooks, per object type: hydration asks for all of them.
seen_properties = sa.Table(
    "seen_properties",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("object_type", sa.Text, nullable=False),
    sa.Column("property", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("portal_id", "object_type", "property"),
)

# The outbox: one row per (inbox event, rule, action) that fired. Unique, so a replayed event
# never fires twice; the payload is rendered when the rule fires (in the apply transaction).
action_runs = sa.Table(
    "action_runs",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("inbox_id", sa.BigInteger, nullable=False),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("action_index", sa.Integer, nullable=False),
    sa.Column(
        "event_occurred_at",
        sa.BigInteger,
        nullable=False,
        comment="the firing event's occurredAt, epoch ms (the partition key)",
    ),
    # Unique by its sequence, indexed (not unique: that would need the partition key).
    sa.Column(
        "id",
        sa.BigInteger,
        sa.Sequence("action_runs_id_seq"),
        nullable=False,
        server_default=sa.text("nextval('action_runs_id_seq'::regclass)"),
    ),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("object_type", sa.Text, nullable=False),
    sa.Column("object_id", sa.BigInteger, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    _now_column("next_attempt_at"),
    sa.Column("last_error", sa.Text),
    sa.Column("result", sa.Text),
    _now_column("created_at"),
    sa.Column("done_at", sa.DateTime(timezone=True)),
    sa.PrimaryKeyConstraint("portal_id", "inbox_id", "rule", "action_index", "event_occurred_at"),
    sa.CheckConstraint("status IN ('pending', 'done', 'failed', 'dead')", name="status"),
    sa.Index(
        "ix_action_runs_due",
        "next_attempt_at",
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    ),
    sa.Index("ix_action_runs_object", "portal_id", "object_id"),
    sa.Index("ix_action_runs_id", "id"),
    sa.Index("ix_action_runs_open", "status", postgresql_where=sa.text("status <> 'done'")),
    postgresql_partition_by="RANGE (event_occurred_at)",
)

# Records our own actions created in HubSpot: their echoes do not trigger rules.
own_writes = sa.Table(
    "own_writes",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("object_type", sa.Text, nullable=False),
    sa.Column("object_id", sa.BigInteger, nullable=False),
    _now_column("created_at"),
    sa.PrimaryKeyConstraint("portal_id", "object_type", "object_id"),
)

# Pipeline stage labels per portal, from the pipelines API (rules may name stages by label).
pipeline_stages = sa.Table(
    "pipeline_stages",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("object_type", sa.Text, nullable=False),
    sa.Column("stage_id", sa.Text, nullable=False),
    sa.Column("pipeline_id", sa.Text, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    _now_column("fetched_at"),
    sa.PrimaryKeyConstraint("portal_id", "object_type", "stage_id"),
)

# One row per running worker process, so "no live worker" shows on /metrics (service/heartbeats.py).
worker_heartbeats = sa.Table(
    "worker_heartbeats",
    metadata,
    sa.Column("worker_id", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("stages", sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
    _now_column("started_at"),
    _now_column("last_seen_at"),
    sa.Column("last_batch_at", sa.DateTime(timezone=True), comment="its apply stage's last claim"),
    sa.PrimaryKeyConstraint("worker_id"),
)

ALERT_STATUSES = ("ok", "firing")

# One row per alert condition (service/alerts.py), so several workers send each transition once.
alert_states = sa.Table(
    "alert_states",
    metadata,
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="ok"),
    _now_column("since"),
    sa.Column("last_sent_at", sa.DateTime(timezone=True)),
    sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
    sa.Column("value", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("report", JSONB, comment="what a stage last reported (the scheduled reconcile)"),
    _now_column("updated_at"),
    sa.Column(
        "pending",
        JSONB,
        nullable=False,
        server_default=sa.text("'[]'::jsonb"),
        comment="messages sent directly (no_worker) and not yet delivered",
    ),
    sa.Column("pending_until", sa.DateTime(timezone=True), comment="a delivery's lease"),
    sa.PrimaryKeyConstraint("key"),
    sa.CheckConstraint("status IN ('ok', 'firing')", name="status"),
)

# The fair claim (service/inbox): each portal's due rows in claim order, found by a loose index
# scan; built per partition without blocking ingest (migration 0011).
sa.Index(
    "ix_inbox_events_due_by_portal",
    inbox_events.c.portal_id,
    inbox_events.c.next_attempt_at,
    inbox_events.c.id,
    postgresql_where=sa.text("status IN ('pending', 'failed')"),
)

# Operators' per-portal controls (service/portals.py): a paused portal's events are still stored
# and acknowledged, but no stage claims its inbox rows, action runs or fetches until it resumes.
portal_controls = sa.Table(
    "portal_controls",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("paused_at", sa.DateTime(timezone=True), comment="paused since; NULL: running"),
    sa.Column("reason", sa.Text, comment="why, as the operator who paused it said"),
    _now_column("updated_at"),
    sa.PrimaryKeyConstraint("portal_id"),
)

# The Webhooks Journal (service/journal.py), app-wide: each journal's cursor (moved by
# compare-and-set), every entry read with its file (gzip, for `journal replay`), each gap.
journal_cursors = sa.Table(
    "journal_cursors",
    metadata,
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
    _now_column("updated_at"),
    sa.PrimaryKeyConstraint("journal"),
)
journal_entries = sa.Table(
    "journal_entries",
    metadata,
    sa.Column("journal", sa.Text, nullable=False),
    sa.Column("entry_offset", sa.Text, nullable=False),
    _now_column("fetched_at"),
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
    sa.Index("ix_journal_entries_fetched_at", "fetched_at"),
    sa.Index("ix_journal_entries_contacts", "contacts", postgresql_using="gin"),
)
journal_gaps = sa.Table(
    "journal_gaps",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("journal", sa.Text, nullable=False),
    _now_column("detected_at"),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("since_ms", sa.BigInteger),
    sa.Column("until_ms", sa.BigInteger),
    sa.Column("from_offset", sa.Text),
    sa.Column("to_offset", sa.Text),
    sa.Column("reconciled_at", sa.DateTime(timezone=True)),
    sa.Column("reconcile_error", sa.Text),
    sa.CheckConstraint("reason IN ('offset_expired', 'file_expired')", name="reason"),
)

# Which inbox row owns each CRM change (service/changes.py): rules and handlers run for the owner
# only. Keyed by events.change_key and occurredAt; partitioned by day like inbox_events.
applied_changes = sa.Table(
    "applied_changes",
    metadata,
    sa.Column("portal_id", sa.BigInteger, nullable=False),
    sa.Column("change_key", sa.BigInteger, nullable=False, comment="events.change_key, 63 bits"),
    sa.Column("occurred_at", sa.BigInteger, nullable=False, comment="HubSpot occurredAt, epoch ms"),
    sa.Column("inbox_id", sa.BigInteger, nullable=False, comment="the inbox row that owns it"),
    _now_column("claimed_at"),
    sa.PrimaryKeyConstraint("portal_id", "change_key", "occurred_at"),
    postgresql_partition_by="RANGE (occurred_at)",
)
