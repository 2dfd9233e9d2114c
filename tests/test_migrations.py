"""Alembic: upgrade from empty matches the models; downgrade and upgrade again work."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service import db
from service.models import metadata


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    """An empty database of its own on the test server."""
    name = "hubspot_webhooks_migrations"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def schema_diff(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), metadata))
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_from_empty_matches_the_models(scratch_url: str) -> None:
    db.migrate(scratch_url)

    assert current_revision(scratch_url) == db.migration_head()
    assert schema_diff(scratch_url) == []


def test_downgrade_to_base_and_upgrade_again(scratch_url: str) -> None:
    db.migrate(scratch_url)
    db.downgrade(scratch_url, "base")

    assert current_revision(scratch_url) is None
    engine = sa.create_engine(scratch_url)
    try:
        assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()

    db.migrate(scratch_url)
    assert current_revision(scratch_url) == db.migration_head()


def test_migrate_twice_is_a_no_op(scratch_url: str) -> None:
    db.migrate(scratch_url)
    db.migrate(scratch_url)

    assert current_revision(scratch_url) == db.migration_head()
