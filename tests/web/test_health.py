"""service.web.health: /healthz answers while the process runs; /readyz needs the database at the
migration head or newer (a rolling deploy migrates before the old instances stop)."""

from __future__ import annotations

import sqlalchemy as sa
from starlette.testclient import TestClient

from service import db
from service.web.app import create_app
from tests.factories import numbered_event
from tests.support import empty_database, make_settings, post_events


def test_unreachable_database_is_503_and_not_ready_but_healthy() -> None:
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    with TestClient(create_app(make_settings(), database_url=unreachable)) as test_client:
        webhook = post_events(test_client, [numbered_event(1)])
        ready = test_client.get("/readyz")
        health = test_client.get("/healthz")

    assert webhook.status_code == 503
    assert "Retry-After" in webhook.headers
    assert ready.status_code == 503
    assert ready.json()["reason"] == "database_unreachable"
    assert health.status_code == 200


def test_readyz_is_200_at_the_migration_head(client: TestClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "schema": db.migration_head()}


def test_readyz_is_503_on_an_unmigrated_database(engine: sa.Engine, database_url: str) -> None:
    name = "hubspot_webhooks_unmigrated"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        with TestClient(create_app(make_settings(), database_url=url)) as test_client:
            response = test_client.get("/readyz")
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    assert response.status_code == 503
    assert response.json()["reason"] == "schema_not_migrated"


def test_readyz_is_503_naming_the_revision_when_the_schema_is_behind(database_url: str) -> None:
    older = db.migration_history()[-2]
    with empty_database(database_url, "readyz_behind") as url:
        db.migrate(url, older)
        with TestClient(create_app(make_settings(), database_url=url)) as test_client:
            response = test_client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["reason"] == "schema_behind"
    assert older in body["detail"]
    assert db.migration_head() in body["detail"]


def test_readyz_is_200_with_a_note_when_a_newer_release_has_migrated(database_url: str) -> None:
    # A rolling deploy: the new release's migration ran, this (old) instance still serves.
    with empty_database(database_url, "readyz_ahead") as url:
        db.migrate(url)
        scratch = sa.create_engine(url)
        with scratch.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
        scratch.dispose()
        with TestClient(create_app(make_settings(), database_url=url)) as test_client:
            response = test_client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["schema"] == "9999_future"
    assert "newer" in body["note"]
    assert db.migration_head() in body["note"]
