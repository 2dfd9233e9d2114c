"""What the benchmarks share: which PostgreSQL to use, and a scratch database on it."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from service import db
from service.settings import Settings

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def progress(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sqlalchemy_url(url: str) -> str:
    """postgres:// or postgresql:// as the service reads DATABASE_URL (SettingsError if not)."""
    normalised = Settings.from_env({"DATABASE_URL": url}).database_url
    assert normalised is not None
    return normalised


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection for administrative statements."""
    return psycopg.connect(db.libpq_url(url), autocommit=True, connect_timeout=5)


def local_server_answers() -> bool:
    """Whether the machine's own PostgreSQL on 127.0.0.1:5432 takes connections."""
    try:
        with psycopg.connect(LOCAL_SERVER, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


@contextmanager
def postgres_server(configured: str | None, name: str) -> Iterator[tuple[str, str]]:
    """The server URL (SQLAlchemy form) and where it came from: configured, local or embedded."""
    if configured:
        yield sqlalchemy_url(configured), "configured"
        return
    if local_server_answers():
        yield sqlalchemy_url(LOCAL_SERVER), "local (127.0.0.1:5432)"
        return
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-pg-") as data_dir:
        progress("no database URL and no local server: starting an embedded PostgreSQL")
        with db.database_url_for(None, Path(data_dir)) as url:
            yield url, "embedded"


@contextmanager
def scratch_database(server_url: str, database: str) -> Iterator[str]:
    """A fresh, migrated database on `server_url`'s server, durable commits, dropped at the end."""
    url = make_url(server_url).set(database=database).render_as_string(hide_password=False)
    with connect(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
        # Whatever postgresql.conf says, every connection to it commits durably.
        admin.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = on')
    try:
        db.migrate(url)
        yield url
    finally:
        with connect(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
