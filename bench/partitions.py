"""Partitioned inbox benchmark: migration 0010 on a populated inbox, then what a retention drop
and a purge cost the acknowledgements of concurrent deliveries.

In one run, on a real PostgreSQL, in a scratch database:

1. **Migration.** The schema at 0009 with `--rows` inbox rows (ten days of them, every status),
   then `migrate` to 0010 while 10 connections keep storing 100-event deliveries with the
   endpoint's own statement (`service.inbox.record_delivery`; the web app itself refuses to
   serve a schema behind its code). Printed: how long the upgrade took, how long it held ACCESS
   EXCLUSIVE on the inbox (pg_locks polled every few ms), and the slowest insert meanwhile.
2. **Acks.** `serve` (one uvicorn process) takes signed 100-event deliveries on 10 connections
   (HubSpot's concurrency per account) for `--seconds`, three times: with nothing else going
   on; while `service.partitions.maintain` drops the partition holding those rows (time moved
   on 11 days with `now_ms`; the deliveries are dated then too); while `hubspot-webhooks purge`
   deletes the dead rows. Printed: ack p50/p99/max per phase, the drop's and the purge's
   duration and how many rows each moved.

With `--actions`, instead: migration 0013 on `--rows` action runs (ten days of them, every
status, half of their inbox rows purged) while 10 connections keep storing deliveries and 4 keep
settling runs by id (the act stage's `complete`). Printed: upgrade time, how long ACCESS
EXCLUSIVE was held on action_runs, the slowest insert and the slowest settle meanwhile.

Figures are printed, never asserted. See bench/README.md.

    .venv/bin/python bench/partitions.py [--rows 1000000] [--seconds 10] [--database-url URL]
    .venv/bin/python bench/partitions.py --actions [--rows 1000000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2
import psycopg
import sqlalchemy as sa
from scratch import connect, postgres_server, progress
from sqlalchemy.engine import make_url

from service import db, inbox, partitions
from service.ops.purge import BATCH
from service.settings import WEBHOOK_PATH
from tests.factories import numbered_event, v3_headers
from tests.servers import serve_env, serve_process

T = TypeVar("T")

DATABASE = "hubspot_webhooks_bench_partitions"
CONNECTIONS = 10
EVENTS_PER_DELIVERY = 100
DAY_MS = 86_400_000
RETENTION_SECONDS = 7 * 86400
SKIP_DAYS = 11  # the clock of the drop phase: the migrated rows (ten days) are all expired
_event_ids = itertools.count(10_000_000_000)


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    if not latencies:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def delivery(occurred_at: int) -> bytes:
    """A body of 100 events never sent before, dated `occurred_at`."""
    events = [
        numbered_event(next(_event_ids) % 1_000_000_000, occurredAt=occurred_at + n, objectId=n)
        for n in range(EVENTS_PER_DELIVERY)
    ]
    return json.dumps(events).encode()


@contextmanager
def load(send: Callable[[], None], connections: int = CONNECTIONS) -> Iterator[list[float]]:
    """`connections` threads calling `send` back to back until the block ends; yields the list
    the latencies (seconds) are appended to."""
    latencies: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            send()
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def populate(url: str, rows: int) -> None:
    """`rows` inbox rows over the last ten days: 97 % done, then ignored, dead, failed, pending."""
    with psycopg.connect(db.libpq_url(url), autocommit=True) as connection:
        connection.execute(
            """
            INSERT INTO inbox_events (portal_id, subscription_id, event_id, object_id,
                occurred_at, subscription_type, signature_version, payload, status)
            SELECT 62515 + n %% 7, 1, n, n %% 50000,
                   (extract(epoch FROM now()) * 1000)::bigint - (n %% 10) * 86400000 - n %% 997,
                   'contact.propertyChange', 'v3',
                   jsonb_build_object('eventId', n, 'propertyName', 'email',
                                      'propertyValue', 'person' || n || '@example.com'),
                   CASE WHEN n %% 200 = 0 THEN 'pending' WHEN n %% 200 = 1 THEN 'failed'
                        WHEN n %% 100 = 2 THEN 'dead' WHEN n %% 100 = 3 THEN 'ignored'
                        ELSE 'done' END
            FROM generate_series(1, %(rows)s) AS n
            """,
            {"rows": rows},
        )
        connection.execute("VACUUM ANALYZE inbox_events")


def watch_exclusive_lock(url: str, relation: int, stop: threading.Event) -> dict[str, float]:
    """Poll pg_locks until `stop`: how long some session held ACCESS EXCLUSIVE on `relation`."""
    held: list[float] = []
    with psycopg.connect(db.libpq_url(url), autocommit=True) as connection:
        while not stop.is_set():
            granted = connection.execute(
                "SELECT 1 FROM pg_locks WHERE relation = %s AND mode = 'AccessExclusiveLock'"
                " AND granted",
                (relation,),
            ).fetchone()
            if granted:
                held.append(time.perf_counter())
            time.sleep(0.003)
    return {"first": held[0], "last": held[-1]} if held else {}


def migration_phase(url: str, rows: int) -> dict[str, Any]:
    """Populate at 0009, upgrade to 0010 under load; the figures."""
    db.migrate(url, "0009")
    progress(f"inserting {rows} rows at revision 0009")
    started = time.perf_counter()
    populate(url, rows)
    progress(f"inserted in {time.perf_counter() - started:.1f} s")
    with psycopg.connect(db.libpq_url(url)) as connection:
        relation, total_size = connection.execute(
            "SELECT 'inbox_events'::regclass::oid::bigint,"
            " pg_size_pretty(pg_total_relation_size('inbox_events'))"
        ).fetchone() or (0, "?")
    local = threading.local()

    def record() -> None:
        if not hasattr(local, "connection"):
            local.connection = psycopg.connect(db.libpq_url(url), autocommit=True)
        batch = inbox.parse_batch(delivery(int(time.time() * 1000)))
        local.connection.execute(
            inbox._RECORD_SQL,  # the endpoint's own statement, run synchronously
            {"events": batch.json_text, "signature_version": "v3"},
        )

    stop = threading.Event()
    watched: dict[str, dict[str, float]] = {}
    watcher = threading.Thread(
        target=lambda: watched.update(lock=watch_exclusive_lock(url, int(relation), stop))
    )
    progress("migrating to 0010 while 10 connections store deliveries")
    with load(record) as before:
        time.sleep(3)
    watcher.start()
    with load(record) as during:
        started = time.perf_counter()
        db.migrate(url, "0010")
        ended = time.perf_counter()
    stop.set()
    watcher.join()
    held = watched.get("lock", {})
    return {
        "rows": rows,
        "table_size": total_size,
        "upgrade_s": round(ended - started, 2),
        "access_exclusive_s": round(held["last"] - held["first"], 3) if held else 0.0,
        "inserts_before": percentiles(before),
        "inserts_during_upgrade": percentiles(during),
    }


def populate_runs(url: str, rows: int) -> None:
    """`rows` action runs over ten days (done mostly), the first half's events still stored."""
    with psycopg.connect(db.libpq_url(url), autocommit=True) as connection:
        connection.execute(
            """
            INSERT INTO inbox_events (portal_id, subscription_id, event_id, object_id,
                occurred_at, subscription_type, signature_version, payload, status)
            SELECT 62515, 1, n, n,
                   (extract(epoch FROM now()) * 1000)::bigint - (n %% 10) * 86400000 - n %% 997,
                   'deal.propertyChange', 'v3', '{}', 'done'
            FROM generate_series(1, %(events)s) AS n
            """,
            {"events": rows // 2},
        )
        connection.execute(
            """
            INSERT INTO action_runs (portal_id, inbox_id, rule, action_index, action,
                object_type, object_id, payload, status, created_at, done_at)
            SELECT 62515 + n %% 7, n, 'deal-won', 0, 'slack', 'deals', n,
                   jsonb_build_object('action', 'slack', 'text', 'Won: deal ' || n),
                   CASE WHEN n %% 200 = 0 THEN 'pending' WHEN n %% 200 = 1 THEN 'failed'
                        WHEN n %% 100 = 2 THEN 'dead' ELSE 'done' END,
                   now() - (n %% 10) * interval '1 day', now()
            FROM generate_series(1, %(rows)s) AS n
            """,
            {"rows": rows},
        )
        connection.execute("VACUUM ANALYZE action_runs")


def actions_migration_phase(url: str, rows: int) -> dict[str, Any]:
    """Populate action_runs at 0012, upgrade to 0013 under ingest and act load; the figures."""
    db.migrate(url, "0012")
    progress(f"inserting {rows} action runs at revision 0012")
    populate_runs(url, rows)
    with psycopg.connect(db.libpq_url(url)) as connection:
        relation, total_size = connection.execute(
            "SELECT 'action_runs'::regclass::oid::bigint,"
            " pg_size_pretty(pg_total_relation_size('action_runs'))"
        ).fetchone() or (0, "?")
    local = threading.local()
    ids = itertools.count(1, 997)

    def record() -> None:
        if not hasattr(local, "connection"):
            local.connection = psycopg.connect(db.libpq_url(url), autocommit=True)
        batch = inbox.parse_batch(delivery(int(time.time() * 1000)))
        local.connection.execute(
            inbox._RECORD_SQL, {"events": batch.json_text, "signature_version": "v3"}
        )

    def settle() -> None:  # the act stage's `complete`, by id, in a transaction of its own
        if not hasattr(local, "connection"):
            local.connection = psycopg.connect(db.libpq_url(url), autocommit=True)
        local.connection.execute(
            "UPDATE action_runs SET status = 'done', done_at = now() WHERE id = %s",
            (next(ids) % rows + 1,),
        )

    stop = threading.Event()
    watched: dict[str, dict[str, float]] = {}
    watcher = threading.Thread(
        target=lambda: watched.update(lock=watch_exclusive_lock(url, int(relation), stop))
    )
    progress("migrating to 0013 while 10 connections store deliveries and 4 settle runs")
    watcher.start()
    with load(record) as inserts, load(settle, 4) as settles:
        started = time.perf_counter()
        db.migrate(url, "0013")
        ended = time.perf_counter()
    stop.set()
    watcher.join()
    held = watched.get("lock", {})
    return {
        "rows": rows,
        "table_size": total_size,
        "upgrade_s": round(ended - started, 2),
        "access_exclusive_s": round(held["last"] - held["first"], 3) if held else 0.0,
        "inserts_during_upgrade": percentiles(inserts),
        "settles_during_upgrade": percentiles(settles),
    }


def during(
    send: Callable[[], None], seconds: float, work: Callable[[], T]
) -> tuple[dict[str, float], T, float]:
    """Deliveries for `seconds`, `work` starting after the first; (acks, its result, its time)."""
    with load(send) as latencies:
        time.sleep(1)
        started = time.perf_counter()
        result = work()
        took = time.perf_counter() - started
        time.sleep(max(0.0, seconds - took - 1))
    return percentiles(latencies), result, took


def purge_dead(engine: sa.Engine) -> int:
    """`hubspot-webhooks purge --dead` of everything stored so far, batch by batch."""
    before, purged = db.utcnow() + timedelta(seconds=1), 0
    while True:
        with engine.begin() as connection:
            deleted = inbox.purge(connection, ["dead"], received_before=before, limit=BATCH)
        purged += deleted
        if deleted < BATCH:
            return purged


def ack_phases(url: str, seconds: float) -> dict[str, Any]:
    """Deliveries to `serve`: alone, during a retention drop, during a purge."""
    engine = db.create_engine(url, pool_size=2)
    clock = int(time.time() * 1000) + SKIP_DAYS * DAY_MS
    with engine.begin() as connection:  # what the migration phase stored: applied since
        connection.execute(
            sa.text(
                "UPDATE inbox_events SET status = 'done', processed_at = now()"
                " WHERE subscription_id <> 1"
            )
        )
    # The partitions of the moved-on clock first (nothing expires with a month's retention), so
    # the deliveries, dated then, have theirs; then the drop is the only work left.
    partitions.maintain(engine, inbox.partitioning(30 * 86400), now_ms=clock)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-partitions-") as tmp:
        env = serve_env(url, Path(tmp) / "data", DATABASE_POOL_SIZE="10")
        with serve_process(env, Path(tmp) / "serve.log") as serving:
            target = serving.url + WEBHOOK_PATH
            local = threading.local()

            def send() -> None:
                if not hasattr(local, "client"):
                    local.client = httpx2.Client(timeout=10)
                body = delivery(clock)
                answer = local.client.post(
                    target, content=body, headers=v3_headers(body, uri=target)
                )
                if answer.status_code != 200:
                    results.setdefault("errors", []).append(answer.status_code)

            progress(f"acks with nothing else going on ({seconds:g} s)")
            with load(send) as alone:
                time.sleep(seconds)
            results["acks_alone"] = percentiles(alone)

            progress("acks during the retention drop of the old partition")
            scheme = inbox.partitioning(RETENTION_SECONDS)
            acks, report, took = during(
                send, seconds, lambda: partitions.maintain(engine, scheme, now_ms=clock)
            )
            results["acks_during_drop"] = acks
            results["drop"] = {
                "s": round(took, 2),
                "dropped": report.dropped if report else None,
                "rows_kept": report.kept if report else None,
                "busy": report.busy if report else None,
            }
            progress("acks during a purge of the dead rows")
            acks, purged, took = during(send, seconds, lambda: purge_dead(engine))
            results["acks_during_purge"] = acks
            results["purge"] = {"s": round(took, 2), "rows": purged}
    engine.dispose()
    return results


def main() -> None:
    """Run both parts on a scratch database and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per ack phase (10)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--actions", action="store_true", help="migration 0013 on action_runs")
    args = parser.parse_args()
    with postgres_server(args.database_url, "partitions") as (server, where):
        progress(f"database: {where}")
        url = make_url(server).set(database=DATABASE).render_as_string(hide_password=False)
        with connect(server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{DATABASE}"')
            version = admin.execute("SHOW server_version").fetchone()
        try:
            figures: dict[str, Any] = {
                "server": f"PostgreSQL {version[0] if version else '?'} ({where})"
            }
            if args.actions:
                figures["actions_migration"] = actions_migration_phase(url, args.rows)
            else:
                figures["migration"] = migration_phase(url, args.rows)
                db.migrate(url)
                figures |= ack_phases(url, args.seconds)
        finally:
            with connect(server) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
