"""Ingest benchmark: how many HubSpot events per second one web process stores durably.

In one run, on a real PostgreSQL with synchronous_commit=on, in a scratch database:

1. a no-op Starlette endpoint (bench/noop_app.py) at 10 connections: the HTTP ceiling;
2. the real endpoint (`python -m service serve`, one uvicorn process, httptools + uvloop) at 10
   concurrent connections (HubSpot's default per account) and at 64, every request a freshly
   signed (v3) batch of 100 events never sent before;
3. a bare Python loop, no HTTP, 10 connections, one 100-event transaction per call: first with
   `service.inbox.record_delivery` (the endpoint's own single-statement jsonb insert, the
   baseline of the goals), then with a plain `executemany` of 100 rows for comparison.

It prints requests/s, events/s, p50/p99 ack latency and errors per phase, the CPU each process
used, and the ratios against the goals (printed, never asserted). See bench/README.md.

    .venv/bin/python bench/ingest.py [--seconds 10] [--database-url URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import math
import os
import platform
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import psycopg
import uvloop
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url

from service import db, inbox
from service.signature import sign_v3

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
SCRATCH_DATABASE = "hubspot_webhooks_bench_ingest"
WEBHOOK_PATH = "/webhooks/hubspot"
EVENTS_PER_BATCH = 100
HUBSPOT_CONNECTIONS = 10  # HubSpot's default concurrency per account
HIGH_CONNECTIONS = 64
# The goals of issue 13, each against the bare record_delivery loop of the same run:
THROUGHPUT_GOAL = 0.85  # endpoint@10 events/s / the loop's events/s, at least
P99_GOAL_RATIO = 1.2  # endpoint@10 p99 ack / the loop's p99, at most (and no errors)
WEB_CPU_GOAL_US = 5.0  # the web process's CPU per event stored at 10 connections, at most
# v3 timestamps are accepted for 5 minutes and every body is signed before its phase starts.
MAX_PHASE_SECONDS = 240
BUSY_OTHER_PERCENT = 25.0  # CPU used by processes outside the benchmark: worth a warning
MAX_CONSECUTIVE_FAILURES = 20  # per connection: then the phase stops, the server is broken
PORTAL_ID = 62515
APP_ID = 1_234_567
# (subscriptionType, subscriptionId, propertyName, propertyValues)
_KINDS: tuple[tuple[str, int, str | None, tuple[str, ...]], ...] = (
    ("contact.propertyChange", 3_100_001, "lifecyclestage", ("lead", "opportunity", "customer")),
    ("contact.propertyChange", 3_100_002, "email", ("ana@example.com", "bo.li@example.org")),
    ("contact.creation", 3_100_003, None, ()),
    ("company.propertyChange", 3_100_004, "name", ("Acme Corporation", "Globex Ltd")),
    ("deal.propertyChange", 3_100_005, "dealstage", ("appointmentscheduled", "closedwon")),
    ("deal.creation", 3_100_006, None, ()),
)
_EXECUTEMANY_SQL = """
    INSERT INTO inbox_events (
        portal_id, subscription_id, event_id, object_id, occurred_at,
        subscription_type, signature_version, payload
    )
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT ON CONSTRAINT pk_inbox_events DO NOTHING
"""


class BenchError(Exception):
    """The benchmark could not be set up or run; the message says what to fix."""


# --- work items ---------------------------------------------------------------------------------


class EventSource:
    """HubSpot-shaped events whose identities were never used before in this run."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._next_id = 1_000_000_000

    def batch(self, now_ms: int) -> list[dict[str, Any]]:
        """One delivery: EVENTS_PER_BATCH new events, as HubSpot's JSON array holds them."""
        rng = self._rng
        events: list[dict[str, Any]] = []
        for _ in range(EVENTS_PER_BATCH):
            kind, subscription_id, prop, values = rng.choice(_KINDS)
            event: dict[str, Any] = {
                "eventId": self._next_id,
                "subscriptionId": subscription_id,
                "portalId": PORTAL_ID,
                "appId": APP_ID,
                "occurredAt": now_ms - rng.randrange(60_000),
                "subscriptionType": kind,
                "attemptNumber": 0,
                "objectId": rng.randrange(1, 100_000_000_000),
                "changeSource": "CRM_UI",
                "sourceId": f"userId:{rng.randrange(1_000_000, 9_999_999)}",
            }
            if prop is not None:
                event["propertyName"] = prop
                event["propertyValue"] = rng.choice(values)
            events.append(event)
            self._next_id += 1
        return events


def encode_body(events: list[dict[str, Any]]) -> bytes:
    """The request body HubSpot would send: a compact JSON array."""
    return json.dumps(events, separators=(",", ":")).encode()


def signed_request(body: bytes, *, port: int, secret: str) -> bytes:
    """A complete HTTP/1.1 POST of `body`, signed with v3 as HubSpot signs it, timestamp now."""
    host = f"127.0.0.1:{port}"
    timestamp = str(int(time.time() * 1000))
    signature = sign_v3(secret, "POST", f"http://{host}{WEBHOOK_PATH}", body, timestamp)
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "User-Agent: HubSpot Connect 2.0 (bench/ingest.py)\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-HubSpot-Signature-v3: {signature}\r\n"
        f"X-HubSpot-Request-Timestamp: {timestamp}\r\n"
        "\r\n"
    )
    return head.encode() + body


def execute_rows(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The executemany parameters for one batch: the endpoint's columns, one tuple per event."""
    return [
        (
            e["portalId"],
            e.get("subscriptionId", 0),
            e["eventId"],
            e.get("objectId", 0),
            e["occurredAt"],
            e["subscriptionType"],
            "v3",
            Jsonb(e),
        )
        for e in events
    ]


class Supply(Generic[T]):
    """Work items made before the clock starts; if they run out, more are made (and counted)."""

    def __init__(self, items: list[T], make: Callable[[], T] | None) -> None:
        self._items = items
        self._next = 0
        self._make = make  # None: cycle through the items (the no-op endpoint stores nothing)
        self.made_late = 0

    def take(self) -> T:
        """The next item."""
        index = self._next
        self._next += 1
        if index < len(self._items):
            return self._items[index]
        if self._make is None:
            return self._items[index % len(self._items)]
        self.made_late += 1
        return self._make()


# --- measurement --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clock:
    """A phase's timeline: warm-up until `measure_from`, then measured until `end`."""

    measure_from: float
    end: float

    @classmethod
    def starting_now(cls, warmup: float, seconds: float) -> Clock:
        """A clock whose warm-up starts now."""
        start = time.perf_counter()
        return cls(measure_from=start + warmup, end=start + warmup + seconds)


@dataclass(slots=True)
class Stats:
    """Outcomes of one phase. Only replies completed inside the measured window count."""

    ok: int = 0
    errors: int = 0
    ok_total: int = 0  # warm-up and the tail after the window included: rows stored
    errors_total: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error_kinds: Counter[str] = field(default_factory=Counter)

    def record(self, started: float, done: float, error: str | None, clock: Clock) -> None:
        """Count one request/transaction that started at `started` and ended at `done`."""
        measured = clock.measure_from <= done < clock.end
        if error is None:
            self.ok_total += 1
            if measured:
                self.ok += 1
                self.latencies_ms.append((done - started) * 1000)
        else:
            self.errors_total += 1
            self.error_kinds[error] += 1
            if measured:
                self.errors += 1


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class CpuMeter:
    """CPU time of this process, the web server, our Postgres processes and the whole machine.

    Postgres: the backends connected to the scratch database and the server's background
    processes (WAL writer, checkpointer...), not other databases' clients of a shared server;
    only when the server runs on this machine.
    """

    def __init__(self, *, web_pid: int | None, database_url: str | None) -> None:
        self._web_pid = web_pid
        self._database_url = database_url
        self._tick = os.sysconf("SC_CLK_TCK")
        self._start: dict[str, dict[int, float]] = {}
        self._started = 0.0

    def start(self) -> None:
        """Take the first reading."""
        self._start = self._read()
        self._started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Percent of one core used by each group since `start`; `other`: everything else.

        Per process, so that processes exiting meanwhile take nothing away; a process that
        started meanwhile counts from zero.
        """
        end = self._read()
        seconds = time.perf_counter() - self._started
        used = {
            group: 100
            * sum(t - self._start.get(group, {}).get(pid, 0.0) for pid, t in times.items())
            / seconds
            for group, times in end.items()
        }
        used["other"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
        return {k: round(v, 1) for k, v in used.items()}

    def _read(self) -> dict[str, dict[int, float]]:
        pid = os.getpid()
        reading = {
            "python": {pid: _process_cpu(pid, self._tick)},
            "machine": {0: _machine_busy(self._tick)},
        }
        if self._web_pid is not None:
            reading["web"] = {self._web_pid: _process_cpu(self._web_pid, self._tick)}
        if self._database_url is not None:
            pids = postgres_pids(self._database_url)
            reading["postgres"] = {p: _process_cpu(p, self._tick) for p in pids}
        return reading


def postgres_pids(url: str) -> list[int]:
    """The server processes working for `url`'s database, if they run on this machine."""
    with _admin(url) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE (datname = current_database() OR datname IS NULL)"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
    pids = [int(row[0]) for row in rows]
    return [pid for pid in pids if _is_postgres(pid)]


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster")
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, so field N is at index N - 3."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _process_cpu(pid: int, tick: int) -> float:
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / tick


def _machine_busy(tick: int) -> float:
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / tick


# --- the HTTP load generator --------------------------------------------------------------------


Reply = tuple[int, bytes, float]  # status, body, perf_counter() when the reply was complete


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: send a request, wait for its whole reply."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Reply] | None = None
        self._transport: asyncio.Transport | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        # uvloop's TCPTransport has the Transport interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Complete the waiting request once a whole reply (head + Content-Length) is here."""
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = _content_length(bytes(self._buffer[:end]))
        if length is None:
            waiter.set_exception(ValueError("reply without Content-Length"))
            return
        total = end + 4 + length
        if len(self._buffer) < total:
            return
        done = time.perf_counter()
        status = int(self._buffer[9:12])
        body = bytes(self._buffer[end + 4 : total])
        del self._buffer[:total]
        self._waiter = None
        waiter.set_result((status, body, done))

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the waiting request."""
        self._closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("the server closed the connection"))

    async def send(self, request: bytes) -> tuple[int, bytes, float, float]:
        """Send `request`; return status, body, and when it was sent and fully answered."""
        if self._closed or self._transport is None:
            raise ConnectionError("connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        self._transport.write(request)
        status, body, done = await self._waiter
        return status, body, started, done

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()


def _content_length(head: bytes) -> int | None:
    start = head.lower().find(b"\r\ncontent-length:")
    if start < 0:
        return None
    value = head[start + 17 :].split(b"\r\n", 1)[0]
    return int(value.strip())


async def _connect(port: int) -> HttpConnection:
    _, connection = await asyncio.get_running_loop().create_connection(
        HttpConnection, "127.0.0.1", port
    )
    return connection


def check_stored(status: int, body: bytes) -> str | None:
    """The real endpoint: 200 and every event of the batch newly stored."""
    if status != 200:
        return f"HTTP {status}"
    stored = json.loads(body).get("stored")
    return None if stored == EVENTS_PER_BATCH else f"stored {stored} of {EVENTS_PER_BATCH}"


def check_ok(status: int, body: bytes) -> str | None:
    """The no-op endpoint: 200."""
    return None if status == 200 else f"HTTP {status}"


async def _http_worker(
    connection: HttpConnection,
    *,
    port: int,
    supply: Supply[bytes],
    check: Callable[[int, bytes], str | None],
    clock: Clock,
    stats: Stats,
) -> None:
    failures = 0
    while time.perf_counter() < clock.end:
        request = supply.take()
        try:
            status, body, started, done = await connection.send(request)
        except (ConnectionError, ValueError) as exc:
            now = time.perf_counter()
            stats.record(now, now, f"{type(exc).__name__}: {exc}", clock)
            failures += 1
            if failures > MAX_CONSECUTIVE_FAILURES:
                raise BenchError(f"{failures} connection failures in a row; last: {exc}") from exc
            connection.close()
            connection = await _connect(port)
            continue
        failures = 0
        stats.record(started, done, check(status, body), clock)
    connection.close()


async def run_http_load(
    *,
    port: int,
    connections: int,
    supply: Supply[bytes],
    check: Callable[[int, bytes], str | None],
    warmup: float,
    seconds: float,
    meter: CpuMeter,
) -> tuple[Stats, dict[str, float]]:
    """Keep `connections` requests in flight for warm-up + `seconds`; measure the last part."""
    opened = await asyncio.gather(*(_connect(port) for _ in range(connections)))
    stats = Stats()
    clock = Clock.starting_now(warmup, seconds)
    cpu = asyncio.create_task(_measure_cpu(meter, clock))
    await asyncio.gather(
        *(
            _http_worker(c, port=port, supply=supply, check=check, clock=clock, stats=stats)
            for c in opened
        ),
    )
    return stats, await cpu


async def _measure_cpu(meter: CpuMeter, clock: Clock) -> dict[str, float]:
    # In a thread: reading /proc and asking Postgres for its pids must not stall the load.
    await asyncio.sleep(max(0.0, clock.measure_from - time.perf_counter()))
    await asyncio.to_thread(meter.start)
    await asyncio.sleep(max(0.0, clock.end - time.perf_counter()))
    return await asyncio.to_thread(meter.stop)


# --- the bare insert loops ----------------------------------------------------------------------


async def record_batch(connection: psycopg.AsyncConnection[Any], batch: inbox.Batch) -> str | None:
    """The endpoint's own insert: one jsonb statement on an autocommit connection."""
    result = await inbox.record_delivery(connection, batch, signature_version="v3")
    return None if result.stored == EVENTS_PER_BATCH else f"stored {result.stored}"


async def executemany_batch(
    connection: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]]
) -> str | None:
    """A plain insert: one transaction of `executemany` over the batch's rows."""
    async with connection.transaction(), connection.cursor() as cursor:
        await cursor.executemany(_EXECUTEMANY_SQL, rows)
    return None


async def _db_worker(
    connection: psycopg.AsyncConnection[Any],
    supply: Supply[T],
    insert: Callable[[psycopg.AsyncConnection[Any], T], Awaitable[str | None]],
    clock: Clock,
    stats: Stats,
) -> None:
    while time.perf_counter() < clock.end and not connection.closed:
        item = supply.take()
        started = time.perf_counter()
        try:
            error = await insert(connection, item)
        except psycopg.Error as exc:
            error = type(exc).__name__
        stats.record(started, time.perf_counter(), error, clock)


async def run_insert_loop(
    *,
    url: str,
    connections: int,
    supply: Supply[T],
    insert: Callable[[psycopg.AsyncConnection[Any], T], Awaitable[str | None]],
    warmup: float,
    seconds: float,
    meter: CpuMeter,
) -> tuple[Stats, dict[str, float]]:
    """`connections` autocommit connections, each inserting one batch after another."""
    opened = await asyncio.gather(*(_connect_db(url) for _ in range(connections)))
    for connection in opened:
        setting = await (await connection.execute("SHOW synchronous_commit")).fetchone()
        if setting is None or setting[0] != "on":
            raise BenchError(f"synchronous_commit is {setting} on the loop's connection")
    stats = Stats()
    clock = Clock.starting_now(warmup, seconds)
    cpu = asyncio.create_task(_measure_cpu(meter, clock))
    try:
        await asyncio.gather(*(_db_worker(c, supply, insert, clock, stats) for c in opened))
        # Close only after the last CPU reading: an exited backend's CPU time cannot be read.
        used = await cpu
    finally:
        for connection in opened:
            await connection.close()
    return stats, used


async def _connect_db(url: str) -> psycopg.AsyncConnection[Any]:
    # As the web pool (service.web.deadline) connects: autocommit, a statement timeout.
    return await psycopg.AsyncConnection.connect(
        db.libpq_url(url),
        autocommit=True,
        connect_timeout=3,
        application_name="hubspot-webhooks-bench",
        options="-c statement_timeout=4000",
    )


# --- the database -------------------------------------------------------------------------------


def sqlalchemy_url(url: str) -> str:
    """postgres:// and postgresql:// as SQLAlchemy's psycopg 3 URL (what service.db expects)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise BenchError(f"not a PostgreSQL URL: {scheme}://...")
    return f"postgresql+psycopg://{rest}"


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` on the same server."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(db.libpq_url(url), autocommit=True, connect_timeout=5)


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh, migrated database on `server_url`'s server, durable commits, dropped at the end."""
    scratch = with_database(server_url, SCRATCH_DATABASE)
    with _admin(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH_DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{SCRATCH_DATABASE}"')
        # Every connection to the scratch database, the web server's pool included, commits
        # durably whatever postgresql.conf says (a role-level setting would still win: checked).
        admin.execute(f'ALTER DATABASE "{SCRATCH_DATABASE}" SET synchronous_commit = on')
    try:
        db.migrate(scratch)
        yield scratch
    finally:
        with _admin(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH_DATABASE}" WITH (FORCE)')


def server_facts(url: str) -> dict[str, str]:
    """Settings that decide what a commit costs, as a fresh connection to `url` sees them."""
    names = ("synchronous_commit", "fsync", "wal_sync_method", "full_page_writes")
    facts: dict[str, str] = {}
    with _admin(url) as connection:
        for name in names:
            row = connection.execute(f"SHOW {name}").fetchone()
            facts[name] = str(row[0]) if row else "?"
        version = connection.execute("SHOW server_version").fetchone()
        facts["version"] = str(version[0]) if version else "?"
    return facts


def reset_table(url: str) -> str:
    """Empty inbox_events and checkpoint; return synchronous_commit as a new connection sees it."""
    with _admin(url) as connection:
        connection.execute("TRUNCATE inbox_events")
        # A checkpoint falling inside a phase would tax that phase alone.
        with suppress(psycopg.errors.InsufficientPrivilege):
            connection.execute("CHECKPOINT")
        row = connection.execute("SHOW synchronous_commit").fetchone()
    setting = str(row[0]) if row else "?"
    if setting != "on":
        raise BenchError(f"synchronous_commit is {setting!r}, not on, in the scratch database")
    return setting


def stored_events(url: str) -> int:
    """Rows in inbox_events."""
    with _admin(url) as connection:
        row = connection.execute("SELECT count(*) FROM inbox_events").fetchone()
    return int(row[0]) if row else 0


# --- server processes ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _http_status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


@contextmanager
def running_server(
    argv: list[str], *, env: dict[str, str], port: int, ready_path: str, log_path: Path
) -> Iterator[int]:
    """Run `argv` until the block ends; yield its pid once GET `ready_path` answers 200."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while _http_status(port, ready_path) != 200:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise BenchError(f"{' '.join(argv[1:4])} did not become ready:\n{tail}")
                time.sleep(0.2)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def service_env(database_url: str, secret: str) -> dict[str, str]:
    """The environment of `python -m service serve`: production settings but quiet logs."""
    env = {k: v for k, v in os.environ.items() if k not in ("WEBHOOK_PUBLIC_URL", "PORT")}
    env.update(DATABASE_URL=database_url, HUBSPOT_CLIENT_SECRET=secret, LOG_LEVEL="WARNING")
    env.update(ALLOWED_HOSTS="127.0.0.1")  # no public URL: the signed URL is the local one
    return env


# --- phases -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PhaseResult:
    """One row of the results table."""

    name: str
    key: str
    connections: int
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_percent: dict[str, float]
    synchronous_commit: str
    notes: list[str]

    def as_json(self) -> dict[str, Any]:
        """The JSON form (NaN as null)."""
        data = {k: getattr(self, k) for k in self.__slots__}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}


def summarise(
    *,
    name: str,
    key: str,
    connections: int,
    seconds: float,
    stats: Stats,
    cpu: dict[str, float],
    synchronous_commit: str,
    notes: list[str],
) -> PhaseResult:
    """Turn a phase's raw counts into its table row."""
    latencies = sorted(stats.latencies_ms)
    other = cpu.get("other", 0.0)
    if other > BUSY_OTHER_PERCENT:
        notes.append(
            f"other processes used {other:.0f}% of a core during this phase: "
            "the machine was not quiet, compare with care"
        )
    if stats.error_kinds:
        kinds = ", ".join(f"{k} x{n}" for k, n in stats.error_kinds.most_common(3))
        notes.append(f"errors (whole phase): {kinds}")
    return PhaseResult(
        name=name,
        key=key,
        connections=connections,
        seconds=seconds,
        requests=stats.ok,
        errors=stats.errors,
        requests_per_s=round(stats.ok / seconds, 1),
        events_per_s=round(stats.ok * EVENTS_PER_BATCH / seconds),
        p50_ms=round(percentile(latencies, 0.50), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        cpu_percent=cpu,
        synchronous_commit=synchronous_commit,
        notes=notes,
    )


def median_result(rounds: Sequence[PhaseResult]) -> PhaseResult:
    """One phase over several rounds: medians of the rates, latencies and CPU; errors summed."""
    first = rounds[0]
    if len(rounds) == 1:
        return first

    def median(values: Sequence[float]) -> float:
        return statistics.median(values) if values else math.nan

    cpu_keys = sorted({k for r in rounds for k in r.cpu_percent})
    return PhaseResult(
        name=first.name,
        key=first.key,
        connections=first.connections,
        seconds=first.seconds,
        requests=sum(r.requests for r in rounds),
        errors=sum(r.errors for r in rounds),
        requests_per_s=round(median([r.requests_per_s for r in rounds]), 1),
        events_per_s=round(median([r.events_per_s for r in rounds])),
        p50_ms=round(median([r.p50_ms for r in rounds]), 2),
        p99_ms=round(median([r.p99_ms for r in rounds]), 2),
        cpu_percent={
            k: round(median([r.cpu_percent[k] for r in rounds if k in r.cpu_percent]), 1)
            for k in cpu_keys
        },
        synchronous_commit=first.synchronous_commit,
        notes=[f"round {i}: {note}" for i, r in enumerate(rounds, 1) for note in r.notes],
    )


@dataclass(frozen=True, slots=True)
class Options:
    """What the command line asked for."""

    seconds: float
    warmup: float
    max_rate: int
    secret: str
    cpu_database_url: str | None = None  # None: the server is not on this machine

    def item_count(self) -> int:
        """How many distinct batches to make before a storing phase starts."""
        return math.ceil(self.max_rate * (self.warmup + self.seconds))


def _late_note(made_late: int, options: Options) -> list[str]:
    if not made_late:
        return []
    return [
        f"{made_late} batches were made during the phase (over --max-rate {options.max_rate}/s): "
        "the load generator's own CPU is in these figures; raise --max-rate"
    ]


def _run_async(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the pre-made work items out of the garbage collector's scans during a phase."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def noop_phase(options: Options, events: EventSource, logs: Path) -> PhaseResult:
    """The no-op Starlette endpoint at 10 connections: same signed 100-event bodies."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "noop_app:app", "--app-dir", str(BENCH_DIR)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools"]
    argv += ["--no-access-log", "--log-level", "warning"]
    now_ms = int(time.time() * 1000)
    requests = [
        signed_request(encode_body(events.batch(now_ms)), port=port, secret=options.secret)
        for _ in range(256)
    ]
    supply: Supply[bytes] = Supply(requests, None)
    env = dict(os.environ)
    with running_server(
        argv, env=env, port=port, ready_path="/healthz", log_path=logs / "noop.log"
    ) as pid:
        _progress(f"no-op endpoint, {HUBSPOT_CONNECTIONS} connections")
        stats, cpu = _run_async(
            run_http_load(
                port=port,
                connections=HUBSPOT_CONNECTIONS,
                supply=supply,
                check=check_ok,
                warmup=options.warmup,
                seconds=options.seconds,
                meter=CpuMeter(web_pid=pid, database_url=options.cpu_database_url),
            )
        )
    return summarise(
        name="no-op Starlette endpoint",
        key="noop",
        connections=HUBSPOT_CONNECTIONS,
        seconds=options.seconds,
        stats=stats,
        cpu=cpu,
        synchronous_commit="n/a",
        notes=["bodies are reused: nothing is stored"],
    )


def endpoint_phases(
    options: Options, events: EventSource, url: str, logs: Path
) -> list[PhaseResult]:
    """The real service, one uvicorn process, at 10 and at 64 connections."""
    port = free_port()
    argv = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = service_env(url, options.secret)
    log_path = logs / "web.log"
    results = []
    with running_server(argv, env=env, port=port, ready_path="/readyz", log_path=log_path) as pid:
        for connections in (HUBSPOT_CONNECTIONS, HIGH_CONNECTIONS):
            setting = reset_table(url)
            count = options.item_count()
            _progress(f"endpoint, {connections} connections: signing {count} new batches")

            def make() -> bytes:
                body = encode_body(events.batch(int(time.time() * 1000)))
                return signed_request(body, port=port, secret=options.secret)

            supply = Supply([make() for _ in range(count)], make)
            _progress(f"endpoint, {connections} connections: running")
            with _frozen_heap():
                stats, cpu = _run_async(
                    run_http_load(
                        port=port,
                        connections=connections,
                        supply=supply,
                        check=check_stored,
                        warmup=options.warmup,
                        seconds=options.seconds,
                        meter=CpuMeter(web_pid=pid, database_url=options.cpu_database_url),
                    )
                )
            notes = _late_note(supply.made_late, options) + _verify_rows(url, stats)
            del supply
            results.append(
                summarise(
                    name="webhook endpoint (service serve)",
                    key=f"endpoint_{connections}",
                    connections=connections,
                    seconds=options.seconds,
                    stats=stats,
                    cpu=cpu,
                    synchronous_commit=setting,
                    notes=notes,
                )
            )
    return results


def _verify_rows(url: str, stats: Stats) -> list[str]:
    rows = stored_events(url)
    expected = stats.ok_total * EVENTS_PER_BATCH
    if rows == expected:
        return [f"verified: {rows} rows stored = events acknowledged"]
    return [f"MISMATCH: {rows} rows stored, {expected} events acknowledged"]


def loop_phase(
    options: Options,
    url: str,
    *,
    name: str,
    key: str,
    make: Callable[[], T],
    insert: Callable[[psycopg.AsyncConnection[Any], T], Awaitable[str | None]],
) -> PhaseResult:
    """A bare Python loop, no HTTP: 10 connections, one 100-event transaction per call."""
    setting = reset_table(url)
    count = options.item_count()
    _progress(f"{name}: making {count} new batches")
    supply = Supply([make() for _ in range(count)], make)
    _progress(f"{name}: running")
    with _frozen_heap():
        stats, cpu = _run_async(
            run_insert_loop(
                url=url,
                connections=HUBSPOT_CONNECTIONS,
                supply=supply,
                insert=insert,
                warmup=options.warmup,
                seconds=options.seconds,
                meter=CpuMeter(web_pid=None, database_url=options.cpu_database_url),
            )
        )
    notes = _late_note(supply.made_late, options) + _verify_rows(url, stats)
    del supply
    return summarise(
        name=name,
        key=key,
        connections=HUBSPOT_CONNECTIONS,
        seconds=options.seconds,
        stats=stats,
        cpu=cpu,
        synchronous_commit=setting,
        notes=notes,
    )


def loop_phases(options: Options, events: EventSource, url: str) -> list[PhaseResult]:
    """record_delivery on pre-parsed batches (the goals' baseline), then plain executemany."""

    def make_batch() -> inbox.Batch:
        # What inbox.parse_batch returns for this body, without its 0.3 ms of parsing per batch
        # (checked once below): the loop measures the insert alone.
        batch = events.batch(int(time.time() * 1000))
        return inbox.Batch(events=batch, json_text=encode_body(batch).decode())

    sample = make_batch()
    if inbox.parse_batch(sample.json_text.encode()) != sample:
        raise BenchError("a generated batch does not parse to itself")

    def make_rows() -> list[tuple[Any, ...]]:
        return execute_rows(events.batch(int(time.time() * 1000)))

    return [
        loop_phase(
            options,
            url,
            name="bare loop: record_delivery",
            key="loop_record_delivery",
            make=make_batch,
            insert=record_batch,
        ),
        loop_phase(
            options,
            url,
            name="bare loop: executemany",
            key="loop_executemany",
            make=make_rows,
            insert=executemany_batch,
        ),
    ]


# --- report -------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _pct(cpu: dict[str, float], key: str) -> str:
    return f"{cpu[key]:.0f}" if key in cpu else "-"


def _per_event(result: PhaseResult, key: str) -> str:
    """Microseconds of `key`'s CPU per event stored (the no-op endpoint: per event received)."""
    if key not in result.cpu_percent or not result.events_per_s:
        return "-"
    return f"{result.cpu_percent[key] / 100 / result.events_per_s * 1e6:.1f}"


def print_table(results: Sequence[PhaseResult]) -> None:
    """The results, one phase a row, then the CPU each process used and the notes."""
    print(
        f"{'phase':<34}{'conns':>6}{'requests/s':>12}{'events/s':>11}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    )
    for r in results:
        print(
            f"{r.name:<34}{r.connections:>6}{r.requests_per_s:>12,.0f}{r.events_per_s:>11,.0f}"
            f"{_ms(r.p50_ms):>9}{_ms(r.p99_ms):>9}{r.errors:>8}"
        )
    print()
    print("CPU, % of one core over the measured window (the machine: all cores, 100 per core)")
    print(
        f"{'phase':<34}{'conns':>6}{'python':>8}{'web':>7}{'postgres':>10}{'other':>7}"
        f"{'machine':>9}   {'CPU µs per event: web':>21}{'postgres':>10}"
    )
    for r in results:
        cpu = r.cpu_percent
        print(
            f"{r.name:<34}{r.connections:>6}{_pct(cpu, 'python'):>8}{_pct(cpu, 'web'):>7}"
            f"{_pct(cpu, 'postgres'):>10}{_pct(cpu, 'other'):>7}{_pct(cpu, 'machine'):>9}   "
            f"{_per_event(r, 'web'):>21}{_per_event(r, 'postgres'):>10}"
        )
    print("  python: this script (the load generator, or the bare loop); web: the uvicorn")
    print("  process; postgres: the database server's processes; other: the rest of the machine.")
    print("  CPU per event is the steadier figure when the machine is busy with other work.")
    print()
    for r in results:
        for note in r.notes:
            print(f"  {r.name} @{r.connections}: {note}")


def ratios(results: Sequence[PhaseResult]) -> dict[str, Any]:
    """The goals and the other ratios, by phase key."""
    by_key = {r.key: r for r in results}
    endpoint = by_key[f"endpoint_{HUBSPOT_CONNECTIONS}"]
    baseline = by_key["loop_record_delivery"]

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b and not math.isnan(a) and not math.isnan(b) else None

    throughput = ratio(endpoint.events_per_s, baseline.events_per_s)
    p99 = ratio(endpoint.p99_ms, baseline.p99_ms)
    web = endpoint.cpu_percent.get("web")
    web_us = (
        round(web / 100 / endpoint.events_per_s * 1e6, 2) if web and endpoint.events_per_s else None
    )
    return {
        "endpoint10_over_record_delivery_loop": throughput,
        "throughput_goal": THROUGHPUT_GOAL,
        "throughput_pass": throughput is not None and throughput >= THROUGHPUT_GOAL,
        "endpoint10_p99_ms": None if math.isnan(endpoint.p99_ms) else endpoint.p99_ms,
        "loop_p99_ms": None if math.isnan(baseline.p99_ms) else baseline.p99_ms,
        "endpoint10_p99_over_loop_p99": p99,
        "p99_goal_ratio": P99_GOAL_RATIO,
        "p99_pass": p99 is not None and p99 <= P99_GOAL_RATIO and endpoint.errors == 0,
        "endpoint10_web_cpu_us_per_event": web_us,
        "web_cpu_goal_us": WEB_CPU_GOAL_US,
        "web_cpu_pass": web_us is not None and web_us <= WEB_CPU_GOAL_US,
        "endpoint10_over_executemany_loop": ratio(
            endpoint.events_per_s, by_key["loop_executemany"].events_per_s
        ),
        "endpoint64_over_endpoint10": ratio(
            by_key[f"endpoint_{HIGH_CONNECTIONS}"].events_per_s, endpoint.events_per_s
        ),
        "endpoint10_over_noop": ratio(endpoint.events_per_s, by_key["noop"].events_per_s),
    }


def print_ratios(r: dict[str, Any]) -> None:
    """The three goals of issue 13, PASS or MISS, then the other ratios (no goal)."""

    def verdict(passed: bool) -> str:
        return "PASS" if passed else "MISS"

    print()
    print("Goals (issue 13), against the bare record_delivery loop of this run:")
    print(
        f"  throughput: endpoint@10 events/s / loop events/s = "
        f"{r['endpoint10_over_record_delivery_loop']}  "
        f"(goal >= {THROUGHPUT_GOAL:.2f})  {verdict(r['throughput_pass'])}"
    )
    print(
        f"  p99 ack: endpoint@10 {r['endpoint10_p99_ms']} ms / loop {r['loop_p99_ms']} ms = "
        f"{r['endpoint10_p99_over_loop_p99']}  "
        f"(goal <= {P99_GOAL_RATIO:.1f}, no errors)  {verdict(r['p99_pass'])}"
    )
    print(
        f"  web CPU: endpoint@10 {r['endpoint10_web_cpu_us_per_event']} µs per event  "
        f"(goal <= {WEB_CPU_GOAL_US:.1f} µs)  {verdict(r['web_cpu_pass'])}"
    )
    print("Other ratios (no goal):")
    print(f"  endpoint@10 / bare executemany loop = {r['endpoint10_over_executemany_loop']}")
    print(f"  endpoint@64 / endpoint@10 = {r['endpoint64_over_endpoint10']}")
    print(f"  endpoint@10 / no-op endpoint = {r['endpoint10_over_noop']}")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description="Durable ingest throughput and ack latency of one web process "
        "(see bench/README.md).",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to use (a scratch database is created on it and dropped); "
        "default $BENCH_DATABASE_URL, else $DATABASE_URL, else an embedded server",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per phase")
    parser.add_argument(
        "--max-rate",
        type=int,
        default=1500,
        help="batches/s to prepare per storing phase before it starts (default 1500)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every phase this many times, interleaved, and report medians (default 1)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.max_rate < 1 or args.rounds < 1:
        parser.error("--seconds, --max-rate and --rounds must be positive, --warmup not negative")
    if args.seconds + args.warmup > MAX_PHASE_SECONDS:
        parser.error(
            f"--warmup + --seconds must be at most {MAX_PHASE_SECONDS}: bodies are signed before "
            "a phase, and HubSpot v3 timestamps are valid for 5 minutes"
        )
    return args


@contextmanager
def postgres_server(configured: str | None, stack: ExitStack) -> Iterator[tuple[str, str]]:
    """The server URL (SQLAlchemy form) and where it came from; embedded if none configured."""
    if configured:
        yield sqlalchemy_url(configured), "configured"
        return
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pg-")))
    _progress("no database URL: starting an embedded PostgreSQL")
    with db.database_url_for(None, data_dir) as url:
        yield url, "embedded"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every phase and print the results."""
    args = parse_args(argv)
    options = Options(
        seconds=args.seconds,
        warmup=args.warmup,
        max_rate=args.max_rate,
        secret=f"bench-{secrets.token_hex(16)}",
    )
    configured = (
        args.database_url or os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    )
    events = EventSource(seed=20261125)
    started = datetime.now(UTC)
    try:
        with ExitStack() as stack:
            server_url, source = stack.enter_context(postgres_server(configured, stack))
            url = stack.enter_context(scratch_database(server_url))
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-logs-")))
            facts = server_facts(url)
            local = bool(postgres_pids(url))
            options = replace(options, cpu_database_url=url if local else None)
            _print_header(started, source, facts, options)
            rounds: list[list[PhaseResult]] = []
            for number in range(1, args.rounds + 1):
                if args.rounds > 1:
                    _progress(f"round {number} of {args.rounds}")
                results = [noop_phase(options, events, logs)]
                results += endpoint_phases(options, events, url, logs)
                results += loop_phases(options, events, url)
                rounds.append(results)
    except BenchError as exc:
        print(f"bench/ingest.py: {exc}", file=sys.stderr)
        return 1
    results = [median_result([r[i] for r in rounds]) for i in range(len(rounds[0]))]
    print()
    if args.rounds > 1:
        print(f"Medians of {args.rounds} rounds (errors: totals)")
    print_table(results)
    summary = ratios(results)
    print_ratios(summary)
    if args.json is not None:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "postgres": {"source": source, **facts},
            "seconds": options.seconds,
            "warmup": options.warmup,
            "events_per_request": EVENTS_PER_BATCH,
            "rounds": args.rounds,
            "phases": [r.as_json() for r in results],
            "phases_by_round": [[r.as_json() for r in one] for one in rounds],
            "ratios": summary,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _print_header(started: datetime, source: str, facts: dict[str, str], options: Options) -> None:
    print(
        f"bench/ingest.py  {started:%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  "
        f"Python {platform.python_version()}"
    )
    print(
        f"PostgreSQL {facts['version']} ({source}), database {SCRATCH_DATABASE}: "
        f"synchronous_commit={facts['synchronous_commit']} fsync={facts['fsync']} "
        f"wal_sync_method={facts['wal_sync_method']} full_page_writes={facts['full_page_writes']}"
    )
    print(
        f"{EVENTS_PER_BATCH} events per request/transaction; {options.warmup:g} s warm-up, "
        f"{options.seconds:g} s measured per phase; uvicorn with httptools + uvloop, 1 process"
    )
    if facts["fsync"] != "on":
        print("WARNING: fsync is off on this server: commits are not durable")


if __name__ == "__main__":
    sys.exit(main())
