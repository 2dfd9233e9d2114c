"""Shared fixtures: one real, migrated Postgres per test session; a clean slate per test."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from service import db, inbox
from service.rules.registry import Registry
from service.settings import Settings
from service.worker.apply import Worker

CLIENT_SECRET = "test-client-secret-0123456789"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database: a fresh one on TEST_DATABASE_URL's server, else an embedded server."""
    configured = Settings.from_env({"DATABASE_URL": os.environ.get("TEST_DATABASE_URL", "")})
    if configured.database_url is None:
        with db.database_url_for(None, tmp_path_factory.mktemp("pg")) as server_url:
            yield from _fresh_database(server_url)
    else:
        yield from _fresh_database(configured.database_url)


def _fresh_database(server_url: str) -> Iterator[str]:
    """Create a uniquely named database so concurrent test runs never share tables."""
    name = f"hubspot_webhooks_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        db.migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A synchronous engine on the test database, for reading rows back."""
    eng = db.create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def clean_db(database_url: str, engine: sa.Engine) -> str:
    """The test database URL, with every table emptied first."""
    with engine.begin() as connection:
        tables = connection.scalars(
            sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
        ).all()
        if tables:
            names = ", ".join(f'"{t}"' for t in tables)
            connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    return database_url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings as a deployment would have them, with a known client secret."""
    return Settings.from_env(
        {"HUBSPOT_CLIENT_SECRET": CLIENT_SECRET, "DATA_DIR": str(tmp_path / "data")}
    )


def store_events(database_url: str, events: list[dict[str, Any]], *, version: str = "v3") -> int:
    """Store events through the ingest path (service.inbox) and wake the workers with the
    NOTIFY that the endpoint's Notifier sends after storing."""

    async def record() -> int:
        connection = await psycopg.AsyncConnection.connect(
            db.libpq_url(database_url), autocommit=True
        )
        async with connection:
            batch = inbox.parse_batch(json.dumps(events).encode())
            result = await inbox.record_delivery(connection, batch, signature_version=version)
            if result.stored:
                await connection.execute(f"NOTIFY {inbox.INBOX_CHANNEL}")
            return result.stored

    return asyncio.run(record())


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m service ARGS` from the repository root with exactly `env` (plus PATH,
    HOME and TMPDIR), capturing its output."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**base, **env},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def store(clean_db: str) -> Callable[[list[dict[str, Any]]], int]:
    """Store events in the (clean) test database's inbox."""
    return lambda events: store_events(clean_db, events)


@pytest.fixture
def worker(clean_db: str, engine: sa.Engine) -> Worker:
    """A worker on the test database, with a registry of its own (no user handlers)."""
    return Worker(engine, batch_size=500, max_attempts=3, handlers=Registry())
