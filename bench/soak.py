"""Soak benchmark: a month of skewed HubSpot traffic from 1,000 portals, in minutes.

One run, on a scratch database of a real PostgreSQL, with the real processes: `serve` (one
uvicorn process) takes signed v3 deliveries of at most 100 events on `--concurrency` connections,
and `--workers` `worker` processes apply them (the mirror, a rule with a webhook action to a
local receiver, and a handler that fails the few events marked as poison, which go dead).

Time is accelerated: one "day" lasts `--day-seconds`. Events carry the time they are sent as
occurredAt, as HubSpot's do, so occurredAt advances one simulated day every `--day-seconds`; the
partitions are one such day wide and kept for `--retention-days` of them. The service refuses an
INBOX_RETENTION under 48 h at start-up, so the bench keeps the partitions itself, through
`service.partitions.maintain` with an accelerated Scheme, four times a simulated day (a worker
does it every 10 minutes of a 24-hour day), and starts the workers with
WORKER_PARTITION_UPKEEP=off so their own upkeep, on the real clock, does not undo it. action_runs
and the API call log are kept the same way when their migration has partitioned them (checked at
run time); else only their sizes are reported.

Traffic: portal k of `--portals` sends with weight 1/k^`--zipf` (a few large, many small) at
`--rate` events/s in all; on day `--import-day` the largest portal sends a bulk import of
`--import-events` property changes, 100 per delivery, as fast as the connections allow. On day
`--purge-day`, `hubspot-webhooks purge --dead --older-than` (`--purge-age-days`) runs while
traffic goes on. Printed: events stored, deliveries acknowledged, ack p50/p99, apply lag of the
small portals (all but the `--large` largest) during the import and outside it, sizes on disk
on the `--snapshot-days` and at the end, partitions created and dropped, the purge.

    .venv/bin/python bench/soak.py [--days 30] [--day-seconds 8] [--rate 1500] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import sqlalchemy as sa
from scratch import postgres_server, progress, scratch_database
from soak_handler import POISON_PROPERTY

from service import db, inbox, outbox, partitions
from service.devtools.delivery import encode_batch, signed_headers
from service.devtools.samples import SampleSpec, build_event
from service.hubspot import client as hubspot_client
from service.settings import WEBHOOK_PATH
from tests.factories import CLIENT_SECRET
from tests.servers import serve_env, serve_process

DATABASE = "hubspot_webhooks_bench_soak"
BENCH_DIR = Path(__file__).resolve().parent
PORTAL_BASE = 40_000_000  # portal k (1 = the largest) is PORTAL_BASE + k
OBJECTS_PER_PORTAL = 5_000
# The tables that grow with traffic (the API call log is the last two).
QUEUES = ("inbox_events", "action_runs", "hubspot_api_calls", "hubspot_api_call_minutes")
CHANGES = (("email", None), ("firstname", "Ada"), ("phone", "+1 555 0100"), ("jobtitle", "CTO"))
RECEIVER_SECRET = "whsec_" + base64.b64encode(b"bench-soak-receiver-key-24").decode()
RULES = """
[[rules]]
name = "soak-customer"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
to = "customer"

[[rules.do]]
action = "webhook"
url = "{url}"
secret = "{secret}"
"""


class Clock:
    """Simulated days since the start: one lasts `day_seconds` of wall time."""

    def __init__(self, day_seconds: float) -> None:
        self.day_seconds, self.started = day_seconds, time.monotonic()

    def day(self) -> float:
        """The simulated day now (0.0 at the start)."""
        return (time.monotonic() - self.started) / self.day_seconds

    def sleep_until(self, day: float, stop: threading.Event) -> None:
        """Wait for the simulated `day` (or `stop`)."""
        stop.wait(max(0.0, (day - self.day()) * self.day_seconds))


class Traffic:
    """HubSpot-shaped deliveries: Zipf-weighted portals, a few poisoned and rule-firing events."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rng = random.Random(args.seed)
        weights = [1 / (k**args.zipf) for k in range(1, args.portals + 1)]
        self.cumulative = list(itertools.accumulate(weights))
        self.portals = [PORTAL_BASE + k for k in range(1, args.portals + 1)]
        self.small_above = PORTAL_BASE + args.large  # portals above this id are "small"
        self.poison, self.fire = args.poison_fraction, args.action_fraction
        self.ids = itertools.count(1_000_000_000)
        self.lock = threading.Lock()

    def _event(self, portal: int, name: str, value: str | None, source: str) -> dict[str, Any]:
        object_id = 1_000 + self.rng.randrange(OBJECTS_PER_PORTAL)
        spec = SampleSpec(
            subscription_type="contact.propertyChange",
            portal_id=portal,
            object_id=object_id,
            property_name=name,
            property_value=value if value is not None else f"c{object_id}@example.com",
            change_source=source,
        )
        return build_event(
            spec, event_id=next(self.ids), occurred_at=int(time.time() * 1000), rng=self.rng
        )

    def delivery(self, size: int) -> bytes:
        """`size` events of portals drawn by weight."""
        with self.lock:
            events = []
            for portal in self.rng.choices(self.portals, cum_weights=self.cumulative, k=size):
                draw = self.rng.random()
                if draw < self.poison and portal > self.small_above:
                    change: tuple[str, str | None] = (POISON_PROPERTY, "x")
                elif draw < self.poison + self.fire:
                    change = ("lifecyclestage", "customer")
                else:
                    change = self.rng.choice(CHANGES)
                events.append(self._event(portal, *change, "CRM_UI"))
            return encode_batch(events)

    def bulk(self, size: int) -> bytes:
        """`size` property changes of the largest portal's import."""
        with self.lock:
            return encode_batch(
                [
                    self._event(self.portals[0], "jobtitle", "Imported", "IMPORT")
                    for _ in range(size)
                ]
            )


@dataclass
class Ack:
    """One delivery's answer."""

    at: float  # monotonic, when sent
    seconds: float
    status: int
    stored: int
    duplicates: int
    bulk: bool


@dataclass
class Run:
    """Everything measured, filled by the threads."""

    acks: list[Ack] = field(default_factory=list)
    lags: list[tuple[float, float]] = field(default_factory=list)  # (received epoch s, lag s)
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)  # epoch seconds of the import
    purge: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def accelerated_schemes(engine: sa.Engine, args: argparse.Namespace) -> list[partitions.Scheme]:
    """The Scheme of every partitioned queue (each owner's own), one simulated day wide, kept
    for its retention in simulated days; a table its migration has not partitioned is left."""
    day = args.day_seconds
    wanted = [
        inbox.partitioning(args.retention_days * day, width_seconds=day),
        outbox.partitioning(args.action_retention_days * day, width_seconds=day),
        hubspot_client.call_log_partitioning(args.api_log_retention_days * day, width_seconds=day),
    ]
    with engine.connect() as connection:
        return [s for s in wanted if partitions.is_partitioned(connection, s.table)]


def reset_partitions(engine: sa.Engine, schemes: list[partitions.Scheme]) -> None:
    """Drop the migration's day-wide partitions (empty) so the accelerated ones can be made."""
    for scheme in schemes:
        with engine.begin() as connection:
            for partition in partitions.attached(connection, scheme):
                connection.execute(sa.text(f"DROP TABLE {partition.name}"))


def keep(engine: sa.Engine, schemes: list[partitions.Scheme], run: Run) -> None:
    """One upkeep round of every scheme, counted in `run.kept`."""
    for scheme in schemes:
        totals = run.kept.setdefault(
            scheme.table, {"created": 0, "dropped": 0, "rows_kept": 0, "busy": 0, "max_s": 0.0}
        )
        started = time.perf_counter()
        report = partitions.maintain(engine, scheme)
        totals["max_s"] = max(totals["max_s"], time.perf_counter() - started)
        if report is not None:
            totals["created"] += len(report.created)
            totals["dropped"] += len(report.dropped)
            totals["rows_kept"] += report.kept
            totals["busy"] += len(report.busy)


_LEAVES = """
    WITH leaves AS (
        SELECT relid FROM pg_partition_tree(CAST(:t AS regclass)) WHERE isleaf
        UNION ALL SELECT CAST(:t AS regclass)
        WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(CAST(:t AS regclass))))
    SELECT count(*), sum(pg_table_size(relid)), sum(pg_indexes_size(relid)) FROM leaves
"""


def sizes(engine: sa.Engine) -> dict[str, Any]:
    """Rows, leaf tables, heap (with TOAST) and index bytes of every queue table."""
    found: dict[str, Any] = {}
    with engine.connect() as connection:
        for table in QUEUES:
            if not connection.scalar(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}):
                continue
            leaves, heap, indexes = connection.execute(sa.text(_LEAVES), {"t": table}).one()
            rows = connection.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            found[table] = {
                "partitioned": partitions.is_partitioned(connection, table),
                "leaves": int(leaves),
                "rows": int(rows or 0),
                "heap_bytes": int(heap or 0),
                "index_bytes": int(indexes or 0),
            }
        found["inbox_not_done"] = dict(
            connection.execute(
                sa.text(
                    "SELECT status, count(*) FROM inbox_events WHERE status <> 'done' GROUP BY 1"
                )
            ).all()
        )
    return found


@contextmanager
def receiver() -> Iterator[tuple[str, list[int]]]:
    """A local endpoint for the webhook action: answers 204, counts deliveries."""
    hits = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hits[0] += 1
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/soak", hits
    finally:
        server.shutdown()


@contextmanager
def workers(count: int, env: dict[str, str], logs: Path) -> Iterator[None]:
    """`count` `worker` processes; SIGTERM at the end."""
    started = []
    for n in range(count):
        log = (logs / f"worker{n}.log").open("wb")
        started.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "service", "worker"],
                    env=env,
                    cwd=BENCH_DIR.parent,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    try:
        yield
    finally:
        for process, _ in started:
            process.send_signal(signal.SIGTERM)
        for process, log in started:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            log.close()


def send_loop(url: str, deliveries: queue.Queue[tuple[bytes, bool] | None], run: Run) -> None:
    """One connection: sign each delivery as it leaves, POST it, record the answer."""
    with httpx.Client(timeout=10) as http:
        while (item := deliveries.get()) is not None:
            body, bulk = item
            headers = signed_headers(
                secret=CLIENT_SECRET, url=url, body=body, timestamp_ms=int(time.time() * 1000)
            )
            started = time.monotonic()
            try:
                answer = http.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                run.errors.append(type(exc).__name__)
                continue
            took = time.monotonic() - started
            counts = answer.json() if answer.status_code == 200 else {}
            run.acks.append(
                Ack(
                    started,
                    took,
                    answer.status_code,
                    int(counts.get("stored", 0)),
                    int(counts.get("duplicates", 0)),
                    bulk,
                )
            )


def background(
    traffic: Traffic, rate: float, deliveries: queue.Queue[Any], stop: threading.Event
) -> None:
    """Deliveries of 10 to 100 events at `rate` events/s until `stop`."""
    due = time.monotonic()
    while not stop.is_set():
        size = traffic.rng.randint(10, 100)
        due += size / rate
        stop.wait(max(0.0, due - time.monotonic()))
        deliveries.put((traffic.delivery(size), False))


def bulk_import(
    traffic: Traffic,
    args: argparse.Namespace,
    clock: Clock,
    *,
    deliveries: queue.Queue[Any],
    run: Run,
    stop: threading.Event,
) -> None:
    """On `--import-day`, the largest portal's import, as fast as the connections take it."""
    clock.sleep_until(args.import_day, stop)
    run.marks["import_start"] = time.time()
    progress(f"day {clock.day():.1f}: bulk import of {args.import_events} events")
    left = args.import_events
    while left > 0 and not stop.is_set():
        size = min(100, left)
        deliveries.put((traffic.bulk(size), True))
        left -= size
    run.marks["import_sent"] = time.time()


def upkeep(
    engine: sa.Engine,
    schemes: list[partitions.Scheme],
    args: argparse.Namespace,
    *,
    clock: Clock,
    run: Run,
    stop: threading.Event,
) -> None:
    """Partition upkeep four times a simulated day; sizes on each snapshot day."""
    snapshots = sorted(d for d in args.snapshot_days if d < args.days)
    while not stop.is_set():
        keep(engine, schemes, run)
        if snapshots and clock.day() >= snapshots[0]:
            snapshots.pop(0)
            day = clock.day()  # later than asked when a round waited on busy locks
            run.snapshots[f"day {day:.1f}"] = sizes(engine)
            progress(f"day {day:.1f}: sizes taken")
        stop.wait(args.day_seconds / 4)


_LAGS = """
    SELECT extract(epoch FROM received_at), extract(epoch FROM processed_at - received_at)
    FROM inbox_events WHERE processed_at > :since AND processed_at <= :upto
      AND portal_id > :small AND status = 'done'
"""
_BULK_DUE = "SELECT count(*) FROM inbox_events WHERE portal_id = :p AND status = 'pending'"


def watch(engine: sa.Engine, traffic: Traffic, run: Run, stop: threading.Event) -> None:
    """Every second: the small portals' events applied since the last look (with a 2 s margin
    for batches still committing), and whether the import has drained."""
    with engine.connect() as connection:
        since = connection.scalar(sa.text("SELECT now()"))
        connection.commit()
        while not stop.wait(1.0):
            upto = connection.scalar(sa.text("SELECT now() - interval '2 s'"))
            rows = connection.execute(
                sa.text(_LAGS), {"since": since, "upto": upto, "small": traffic.small_above}
            ).all()
            run.lags.extend((float(r), float(lag)) for r, lag in rows)
            since = upto
            sent = "import_sent" in run.marks and "import_drained" not in run.marks
            if sent and not connection.scalar(sa.text(_BULK_DUE), {"p": traffic.portals[0]}):
                run.marks["import_drained"] = time.time()
            connection.commit()


def purge(
    url: str, args: argparse.Namespace, clock: Clock, run: Run, stop: threading.Event
) -> None:
    """`hubspot-webhooks purge --dead --older-than` on `--purge-day`, as an operator runs it."""
    clock.sleep_until(args.purge_day, stop)
    if stop.is_set():
        return
    age = round(args.purge_age_days * args.day_seconds)
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "service", "purge", "--dead", "--older-than", f"{age}s"],
        env=env,
        cwd=BENCH_DIR.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    ended = time.monotonic()
    run.purge = {
        "older_than": f"{age}s ({args.purge_age_days:g} days)",
        "seconds": round(ended - started, 2),
        "output": (done.stdout or done.stderr).strip().splitlines()[-1:],
        "window": (started, ended),
    }
    progress(f"day {clock.day():.1f}: purge took {ended - started:.2f} s: {run.purge['output']}")


def soak(url: str, args: argparse.Namespace, tmp: Path) -> Run:
    """Start everything, run the simulated days, drain, and measure."""
    run, clock_stop, traffic = Run(), threading.Event(), Traffic(args)
    engine = db.create_engine(url, pool_size=3)
    schemes = accelerated_schemes(engine, args)
    reset_partitions(engine, schemes)
    keep(engine, schemes, run)
    run.kept = {}  # the first round made the starting layout: count what the month does
    deliveries: queue.Queue[tuple[bytes, bool] | None] = queue.Queue(maxsize=2 * args.concurrency)
    with ExitStack() as stack:
        hook_url, hits = stack.enter_context(receiver())
        rules = tmp / "rules.toml"
        rules.write_text(RULES.format(url=hook_url, secret=RECEIVER_SECRET))
        serving = stack.enter_context(
            serve_process(serve_env(url, tmp / "data", DATABASE_POOL_SIZE="10"), tmp / "serve.log")
        )
        env = {
            **{k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ},
            "DATABASE_URL": url,
            "DATA_DIR": str(tmp / "data"),
            "LOG_LEVEL": "WARNING",
            "WORKER_PARTITION_UPKEEP": "off",
            "RULES_FILE": str(rules),
            "HANDLER_MODULES": "soak_handler",
            "PYTHONPATH": str(BENCH_DIR),
            "MAX_ATTEMPTS": "1",
        }
        stack.enter_context(workers(args.workers, env, tmp))
        target = serving.url + WEBHOOK_PATH
        clock = Clock(args.day_seconds)
        progress(f"{args.days} days of {args.day_seconds:g} s, {args.rate:g} events/s")
        senders = [
            threading.Thread(target=send_loop, args=(target, deliveries, run), daemon=True)
            for _ in range(args.concurrency)
        ]
        helpers = [
            threading.Thread(target=target, daemon=True)
            for target in (
                partial(background, traffic, args.rate, deliveries, clock_stop),
                partial(
                    bulk_import,
                    traffic,
                    args,
                    clock,
                    deliveries=deliveries,
                    run=run,
                    stop=clock_stop,
                ),
                partial(upkeep, engine, schemes, args, clock=clock, run=run, stop=clock_stop),
                partial(purge, url, args, clock, run, clock_stop),
            )
        ]
        watcher_stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(engine, traffic, run, watcher_stop))
        for thread in [*senders, *helpers, watcher]:
            thread.start()
        next_note = 1
        while clock.day() < args.days:
            time.sleep(0.5)
            if clock.day() >= next_note * 5:
                progress(f"day {clock.day():.1f}: {len(run.acks)} deliveries acknowledged")
                next_note += 1
        clock_stop.set()
        for thread in helpers:
            thread.join(120)
        for _ in senders:
            deliveries.put(None)
        for thread in senders:
            thread.join(60)
        run.marks["traffic_end"] = time.time()
        run.snapshots[f"day {clock.day():.1f}, traffic end"] = sizes(engine)
        progress("traffic stopped; waiting for the workers to drain")
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and sizes(engine)["inbox_not_done"].get("pending"):
            time.sleep(1)
        time.sleep(3)  # the watcher's 2 s margin
        watcher_stop.set()
        watcher.join(30)
        keep(engine, schemes, run)
        run.snapshots[f"day {clock.day():.1f}, drained"] = sizes(engine)
        with engine.connect() as connection:
            run.marks["action_runs"] = dict(  # type: ignore[assignment]
                connection.execute(
                    sa.text("SELECT status, count(*) FROM action_runs GROUP BY 1")
                ).all()
            )
        run.marks["receiver_hits"] = hits[0]
    engine.dispose()
    return run


def mib(count: int) -> str:
    """Bytes as MiB with two decimals."""
    return f"{count / 1048576:,.2f}"


def figures(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """The measured figures, JSON-ready."""
    ok = [a for a in run.acks if a.status == 200]
    purge_window = run.purge.get("window", (0.0, 0.0))
    start, end = run.marks.get("import_start", 0.0), run.marks.get("import_drained", 0.0)
    during = [lag for received, lag in run.lags if start <= received <= end]
    other = [lag for received, lag in run.lags if not start <= received <= end]

    def acks(subset: list[Ack]) -> dict[str, float]:
        seconds = [a.seconds for a in subset]
        return {
            "n": len(seconds),
            "p50_ms": round(percentile(seconds, 0.5) * 1000, 1),
            "p99_ms": round(percentile(seconds, 0.99) * 1000, 1),
            "max_ms": round(max(seconds, default=0) * 1000, 1),
        }

    def lags(values: list[float]) -> dict[str, float]:
        return {
            "n": len(values),
            "p50_s": round(percentile(values, 0.5), 3),
            "p95_s": round(percentile(values, 0.95), 3),
            "p99_s": round(percentile(values, 0.99), 3),
            "max_s": round(max(values, default=0), 3),
        }

    return {
        "parameters": {k: v for k, v in vars(args).items() if k != "json"},
        "deliveries": len(run.acks) + len(run.errors),
        "acknowledged": len(ok),
        "not_200": sorted({a.status for a in run.acks if a.status != 200}),
        "errors": run.errors[:10],
        "events_acknowledged": sum(a.stored + a.duplicates for a in ok),
        "events_stored": sum(a.stored for a in ok),
        "duplicates": sum(a.duplicates for a in ok),
        "acks": acks(ok),
        "acks_import": acks([a for a in ok if a.bulk]),
        "acks_during_purge": acks([a for a in ok if purge_window[0] <= a.at <= purge_window[1]]),
        "import": {
            "events": args.import_events,
            "send_s": round(run.marks.get("import_sent", 0) - start, 1),
            "drain_s": round(end - start, 1) if end else None,
        },
        "lag_small_during_import": lags(during),
        "lag_small_otherwise": lags(other),
        "partitions": run.kept,
        "purge": {k: v for k, v in run.purge.items() if k != "window"},
        "sizes": run.snapshots,
        "action_runs": run.marks.get("action_runs"),
        "receiver_hits": run.marks.get("receiver_hits"),
    }


def report(found: dict[str, Any]) -> None:
    """Print the figures as tables."""
    failed = f"; not 200: {found['not_200']}, errors: {found['errors']}"
    failed = failed if found["not_200"] or found["errors"] else ""
    lines = [
        ("deliveries acknowledged (200)", f"{found['acknowledged']:,} of {found['deliveries']:,}"),
        (
            "events acknowledged / stored / duplicates",
            f"{found['events_acknowledged']:,} / {found['events_stored']:,}"
            f" / {found['duplicates']:,}{failed}",
        ),
    ]
    for key, name in (
        ("acks", "ack, all"),
        ("acks_import", "ack, import deliveries"),
        ("acks_during_purge", "ack, during the purge"),
    ):
        a = found[key]
        values = f"{a['p50_ms']} / {a['p99_ms']} / {a['max_ms']} ms (n={a['n']:,})"
        lines.append((f"{name} p50 / p99 / max", values))
    imp = found["import"]
    lines.append(
        (
            "bulk import",
            f"{imp['events']:,} events sent in {imp['send_s']} s, drained after {imp['drain_s']} s",
        )
    )
    for key, name in (
        ("lag_small_during_import", "apply lag, small portals, during the import"),
        ("lag_small_otherwise", "apply lag, small portals, otherwise"),
    ):
        lag = found[key]
        values = f"{lag['p50_s']} / {lag['p95_s']} / {lag['p99_s']} / {lag['max_s']} s"
        lines.append((f"{name} p50 / p95 / p99 / max", f"{values} (n={lag['n']:,})"))
    for table, kept in found["partitions"].items():
        values = (
            f"{kept['created']} / {kept['dropped']} ({kept['rows_kept']:,} rows kept,"
            f" {kept['busy']} busy, slowest round {kept['max_s']:.2f} s)"
        )
        lines.append((f"{table} partitions created / dropped", values))
    purged = found["purge"]
    lines.append(
        (
            f"purge --dead --older-than {purged.get('older_than')}",
            f"{purged.get('seconds')} s wall (a new Python process): {purged.get('output')}",
        )
    )
    runs = f"{found['action_runs']}; {found['receiver_hits']}"
    lines.append(("action runs by status; receiver hits", runs))
    width = max(len(name) for name, _ in lines)
    print()
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    print("\nsizes on disk (MiB; heap includes TOAST, all partitions summed)")
    head = ("when", "table", "partitioned", "leaves", "rows", "heap", "indexes", "total")
    row = "{:<24} {:<26} {:>11} {:>6} {:>10} {:>9} {:>9} {:>9}"
    print(row.format(*head))
    for when, tables in found["sizes"].items():
        for table in QUEUES:
            if table in tables:
                t = tables[table]
                heap, indexes = t["heap_bytes"], t["index_bytes"]
                print(
                    row.format(
                        when,
                        table,
                        str(t["partitioned"]),
                        t["leaves"],
                        f"{t['rows']:,}",
                        mib(heap),
                        mib(indexes),
                        mib(heap + indexes),
                    )
                )
        print(f"{'':<24} inbox rows not done: {tables['inbox_not_done']}")


def main() -> None:
    """Parse the options, run the soak on a scratch database, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portals", type=int, default=1000)
    parser.add_argument("--zipf", type=float, default=1.1, help="portal k's weight: 1/k^zipf")
    parser.add_argument("--large", type=int, default=10, help="the largest N are not 'small'")
    parser.add_argument("--rate", type=float, default=1500, help="background events/s")
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--day-seconds", type=float, default=8)
    parser.add_argument("--retention-days", type=float, default=7, help="INBOX_RETENTION")
    parser.add_argument("--action-retention-days", type=float, default=7, help="ACTION_RETENTION")
    parser.add_argument("--api-log-retention-days", type=float, default=1, help="API_LOG_RETENTION")
    parser.add_argument("--import-day", type=float, default=15)
    parser.add_argument("--import-events", type=int, default=200_000)
    parser.add_argument("--purge-day", type=float, default=29)
    parser.add_argument("--purge-age-days", type=float, default=20)
    parser.add_argument("--snapshot-days", type=float, nargs="*", default=[10, 20])
    parser.add_argument("--poison-fraction", type=float, default=0.002)
    parser.add_argument("--action-fraction", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=180)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    started = time.monotonic()
    with (
        postgres_server(args.database_url, "soak") as (server, where),
        scratch_database(server, DATABASE) as url,
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
    ):
        progress(f"database: {where}")
        with db.create_engine(url, pool_size=1).connect() as connection:
            settings: dict[str, str] = dict(
                connection.execute(
                    sa.text(
                        "SELECT name, setting FROM pg_settings WHERE name IN"
                        " ('server_version', 'autovacuum', 'synchronous_commit', 'shared_buffers')"
                    )
                ).all()
            )
        run = soak(url, args, Path(tmp))
    found = figures(run, args)
    found["server"] = {"where": where, **settings}
    found["wall_s"] = round(time.monotonic() - started, 1)
    print(
        f"bench/soak.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
        f"{os.cpu_count()} CPUs  PostgreSQL {settings.get('server_version')} ({where}),"
        f" autovacuum={settings.get('autovacuum')}, wall {found['wall_s']} s"
    )
    report(found)
    if args.json:
        args.json.write_text(json.dumps(found, indent=2, default=str))


if __name__ == "__main__":
    main()
