"""Alembic environment: runs on the connection handed over by service.db (advisory-locked)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from service.models import metadata

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, sa.Connection):
    raise RuntimeError("run migrations through `hubspot-webhooks migrate`, not bare alembic")

# Fail fast instead of queueing behind a long transaction while holding locks that block ingest.
connection.execute(sa.text("SET lock_timeout = '10s'"))
# Session settings outlive the commit; committing hands Alembic a connection with no transaction
# open, so it owns each migration's transaction (and can leave it for an autocommit block, as
# CREATE INDEX CONCURRENTLY needs).
connection.commit()
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
