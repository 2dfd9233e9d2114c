"""Helpers several test modules share that are neither builders (tests/factories.py) nor
fixtures (conftest.py): ingesting events, running the command, fake sleeps, reading tables back,
and the harness the outbox and rule engine tests drive a worker and an action runner with."""

from __future__ import annotations

import asyncio
import graphlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx2
import psycopg
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from service import db, fetches, inbox, outbox
from service.events import Event, Kind
from service.hubspot.client import HubSpotApi
from service.hubspot.oauth import Tokens
from service.hubspot.ratelimit import Budget
from service.rules.registry import Registry
from service.settings import Settings
from service.worker.act import ActionRunner
from service.worker.apply import Worker
from tests.factories import CLIENT_SECRET, PORTAL, TOKEN, v3_headers
from tests.receivers import Receiver

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_RULES = ROOT / "examples" / "rules.toml"
INVALID_RULES = Path(__file__).resolve().parent / "payloads" / "rules_invalid.toml"

Store = Callable[[list[dict[str, Any]]], int]

# --- ingest ----------------------------------------------------------------------------------


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


def make_settings(**env: str) -> Settings:
    """The web app's settings: the known client secret, plus `env`."""
    return Settings.from_env({"HUBSPOT_CLIENT_SECRET": CLIENT_SECRET, **env})


def post(client: TestClient, body: bytes, **kwargs: Any) -> httpx2.Response:
    """Sign `body` as HubSpot would (see `v3_headers` for the options) and POST it."""
    return client.post("/webhooks/hubspot", content=body, headers=v3_headers(body, **kwargs))


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text as {(sample name, {label: value}): value}, through prometheus_client's
    own parser (so a malformed exposition fails the test)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def post_events(client: TestClient, events: Any, **kwargs: Any) -> httpx2.Response:
    """POST `events` as one signed JSON body."""
    return post(client, json.dumps(events).encode(), **kwargs)


# --- the command -----------------------------------------------------------------------------


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m service ARGS` from the repository root with exactly `env` (plus PATH,
    HOME and TMPDIR), capturing its output."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def empty_database(database_url: str, name: str) -> Iterator[str]:
    """A database with no tables on the test server, as a deploy has before `migrate`
    (`name` plus a random suffix, so concurrent test runs never share it)."""
    name = f"{name}_{secrets.token_hex(4)}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def line_number(text: str, line: str, occurrence: int = 1) -> int:
    """The 1-based number of the `occurrence`th line of `text` that is exactly `line`."""
    found = [n for n, text_line in enumerate(text.splitlines(), 1) if text_line.strip() == line]
    return found[occurrence - 1]


def invalid_rule_lines() -> tuple[int, int, int]:
    """The lines of the three mistakes in payloads/rules_invalid.toml."""
    text = INVALID_RULES.read_text()
    return (
        line_number(text, 'text = "Won: {record.dealname} {event.nope}"'),
        line_number(text, 'object = "leads"'),
        line_number(text, 'action = "email"'),
    )


# --- fake time -------------------------------------------------------------------------------


class Sleeps:
    """A fake `sleep` that records each pause; `real=True` also waits."""

    def __init__(self, *, real: bool = False) -> None:
        self.real = real
        self.pauses: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.real:
            time.sleep(seconds)


class DbClock(Sleeps):
    """A limiter `sleep` that advances the limiter's clock: stored call times move back."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__()
        self.engine = engine

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds)
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE rate_limits SET calls = ARRAY(SELECT t - :ms FROM unnest(calls) t),"
                    " blocked_until_ms = blocked_until_ms - :ms"
                ),
                {"ms": int(seconds * 1000) + 1},
            )


# --- HubSpot API clients (the fixtures in tests/conftest.py and tests/hubspot/conftest.py) ---


class MakeApi(Protocol):
    """The `make_api` fixture: an API client on the fake HubSpot (`own`: another process's
    engine, else the test database's)."""

    def __call__(
        self,
        own: sa.Engine | None = None,
        /,
        *,
        token: str | None = TOKEN,
        sleep: Callable[[float], None] | None = None,
        limiter_sleep: Callable[[float], None] | None = None,
        budgets: dict[str, Budget] | None = None,
    ) -> HubSpotApi: ...


class InstallTokens(Protocol):
    """The `install_tokens` fixture: a portal's OAuth tokens, stored as the install would."""

    def __call__(self, portal_id: int, *, expires_in: timedelta) -> Tokens: ...


# --- reading the database back ---------------------------------------------------------------


def mirror_row(engine: sa.Engine, view: str, object_id: int) -> Any:
    """PORTAL's record `object_id` in a mirror view (hubspot_contacts, ...), or None."""
    with engine.connect() as connection:
        return connection.execute(
            sa.text(f"SELECT * FROM {view} WHERE portal_id = :p AND object_id = :o"),
            {"p": PORTAL, "o": object_id},
        ).first()


def inbox_statuses(engine: sa.Engine) -> list[str]:
    """The status of every inbox row, oldest first."""
    with engine.connect() as connection:
        return list(connection.scalars(sa.text("SELECT status FROM inbox_events ORDER BY id")))


def hydrations(engine: sa.Engine) -> list[tuple[str, int]]:
    """The fetches asked for, as (object type, object id)."""
    with engine.connect() as connection:
        return [
            (r.object_type, r.object_id)
            for r in connection.execute(
                sa.text("SELECT * FROM hydration_requests ORDER BY object_type, object_id")
            )
        ]


# --- which partitions a statement reads ------------------------------------------------------


@contextmanager
def statements_run(engine: sa.Engine, prefix: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements starting with `prefix` that run on `engine` meanwhile, as the driver got
    them (text, parameters)."""
    seen: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:  # (connection, cursor, statement, parameters, ...)
        if args[2].lstrip().startswith(prefix):
            seen.append((args[2], args[3]))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def partitions_read(engine: sa.Engine, statement: str, parameters: Any) -> dict[str, int]:
    """Partition -> index or table scans of it, when `statement` runs again under EXPLAIN
    ANALYZE (and is rolled back); partitions never scanned are left out."""
    with engine.connect() as connection:  # closed without a commit: rolled back
        [explained] = connection.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
        ).scalar_one()
    scans: dict[str, int] = {}
    nodes = [explained["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if "Scan" in node["Node Type"] and node.get("Actual Loops") and "Relation Name" in node:
            name = node["Relation Name"]
            scans[name] = scans.get(name, 0) + int(node["Actual Loops"])
    return scans


def partitions_holding(engine: sa.Engine, inbox_ids: list[int]) -> set[str]:
    """The inbox partitions the rows are stored in."""
    with engine.connect() as connection:
        return set(
            connection.scalars(
                sa.text(
                    "SELECT DISTINCT tableoid::regclass::text FROM inbox_events"
                    " WHERE id = ANY(:ids)"
                ),
                {"ids": inbox_ids},
            )
        )


def empty_tables(engine: sa.Engine) -> None:
    """Empty every table, for each hypothesis example (function fixtures run once per test).

    DELETE, children before the tables they reference: TRUNCATE (as clean_db does) costs a new
    file per table, which over two resets per example would be most of this test's time.
    """
    with engine.begin() as connection:
        tables = connection.scalars(
            sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
        ).all()
        references = connection.execute(
            sa.text(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
                " WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
            )
        ).all()
        referenced_by = {t: {c for c, p in references if p == t and c != t} for t in tables}
        for table in graphlib.TopologicalSorter(referenced_by).static_order():
            connection.execute(sa.text(f'DELETE FROM "{table}"'))


def dump(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the mirror holds (no wall-clock columns), and the inbox rows' outcomes."""
    with engine.connect() as connection:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(tuple(r) for r in connection.execute(sa.text(sql)))

        return {
            "crm_objects": rows(
                "SELECT portal_id, object_type, object_id, properties::text, versions::text,"
                " archived, archived_version, merged_into, merged_version, erased, erased_version"
                " FROM crm_objects"
            ),
            "crm_associations": rows(
                "SELECT portal_id, from_type, from_id, to_type, to_id, association_type, present,"
                " is_primary, version FROM crm_associations"
            ),
            "hubspot_associations": rows(
                "SELECT portal_id, from_type, from_id, to_type, to_id, association_type,"
                " is_primary FROM hubspot_associations"
            ),
            "hydration_requests": rows(
                "SELECT portal_id, object_type, object_id, status FROM hydration_requests"
            ),
            "seen_properties": rows("SELECT portal_id, object_type, property FROM seen_properties"),
            # The stored event (scrubbed or not) without the delivery detail, and its outcome.
            "inbox_events": rows(
                "SELECT portal_id, subscription_id, event_id, object_id, occurred_at,"
                " (payload - 'attemptNumber')::text, status, attempts FROM inbox_events"
            ),
        }


# --- a worker and an action runner over one rules file ---------------------------------------


@dataclass
class Harness:
    """A worker and an action runner over one rules file, with their targets."""

    engine: sa.Engine
    database_url: str
    settings: Settings
    worker: Worker
    runner: ActionRunner
    receiver: Receiver  # Slack and the webhook target: one local server, two paths
    env: dict[str, str] = field(default_factory=dict)

    def store(self, *events: dict[str, Any]) -> int:
        """Deliver `events` in one request, as HubSpot would; returns how many were new."""
        return store_events(self.database_url, list(events))

    def apply(self) -> int:
        """The apply stage until nothing is due."""
        return self.worker.drain()

    def act(self) -> int:
        """The act stage until nothing is due."""
        return self.runner.drain()

    def runs(self) -> list[Any]:
        """Every action run, oldest first, payload included."""
        with self.engine.connect() as connection:
            return list(connection.execute(sa.text("SELECT * FROM action_runs ORDER BY id")))

    def fired(self) -> list[tuple[str, int, str]]:
        """(rule, object id, action) of every action run, oldest first."""
        return [(r.rule, r.object_id, r.action) for r in self.runs()]

    def make_due(self) -> None:
        """Skip the backoff (or an expired lease): every unfinished run is due now."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE action_runs SET next_attempt_at = now()"
                    " WHERE status IN ('pending', 'failed')"
                )
            )

    def inbox_statuses(self) -> list[str]:
        """The status of every inbox row, oldest first."""
        return inbox_statuses(self.engine)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m service ARGS` against this database."""
        return run_cli(*args, env={"DATABASE_URL": self.database_url, "LOG_LEVEL": "WARNING"})


MakeHarness = Callable[..., Harness]


# --- dead letters, as the admin tree shows them ------------------------------------------------


@dataclass
class Breakable:
    """A worker whose contact handler fails while `broken` is set: one attempt, then dead."""

    worker: Worker
    broken: bool = True


def breakable_worker(engine: sa.Engine) -> Breakable:
    """A worker (MAX_ATTEMPTS 1) whose contact creations die until `.broken` is cleared."""
    registry = Registry()
    breakable = Breakable(Worker(engine, max_attempts=1, handlers=registry))

    @registry.on("contacts", Kind.CREATION)
    def created(event: Event, session: Any) -> None:
        if breakable.broken:
            raise RuntimeError("CRM sync for this contact is switched off")

    return breakable


def dead_run_and_fetch(engine: sa.Engine, inbox_id: int) -> None:
    """A dead action run (of `inbox_id`, rule `won`) and a dead fetch (contacts 501), through
    their owners, as the act and hydrate stages leave them."""
    with engine.begin() as connection:
        outbox.enqueue(
            connection,
            [
                {
                    "portal_id": PORTAL,
                    "inbox_id": inbox_id,
                    "rule": "won",
                    "action_index": 0,
                    "event_occurred_at": 1_700_000_000_000,
                    "action": "webhook",
                    "object_type": "contacts",
                    "object_id": 501,
                    "payload": {"email": "ada@example.com"},
                }
            ],
        )
        [run] = outbox.claim(connection)
        outbox.fail(connection, run.id, "HTTP 410 from the target", max_attempts=3, permanent=True)
        fetches.request(connection, [fetches.Wanted((PORTAL, "contacts", 501), "created")])
        claimed = fetches.claim(connection)
        assert claimed is not None
        fetches.fail(connection, claimed, "HubSpot answered 403", max_attempts=1)


def wait_until_answering(
    process: subprocess.Popen[str], url: str, *, seconds: float, what: str
) -> None:
    """Poll `url` until it answers 200; fail with the process's output if it exits first."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, process.communicate()
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} did not come up"
        time.sleep(0.2)
