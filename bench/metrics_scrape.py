"""The cost of a /metrics scrape's database gauges on an inbox of a million rows.

The gauges of GET /metrics are read from Postgres on every scrape (service/web/gauges.py,
`DatabaseCollector`); the goal is that a scrape's queries stay under 50 ms however large the
inbox grows. This fills a scratch database with set-based SQL (`generate_series`, no Python
loop): `--rows` inbox rows (default 1,000,000) in a steady-state mix (94.5% done, 5% ignored,
0.3% pending, 0.15% failed, 0.05% dead; received over the last week, the newest 20,000
processed within the last five minutes), 200,000 action runs, 5,000 pending and 100 dead
hydration requests, 20 portals' rate limits, tokens and API call counts, a day of per-minute API
call counts (every portal calling 6 endpoints every minute, 429s in one minute of 7: 197,484
rows, what a day's pruning leaves at most for such a fleet), and 3 worker heartbeats; then
VACUUM ANALYZE (what autovacuum does on a live database). It times `--scrapes`
reads of the collector (every query, one transaction, as a scrape runs them) and of the whole
Prometheus text (`generate_latest` on a registry holding only the collector), prints p50, p99
and max against the goal as PASS/MISS, the estimated and exact done counts, and each query's
plan (EXPLAIN ANALYZE) so index use can be checked.

    .venv/bin/python bench/metrics_scrape.py [--rows 1000000] [--scrapes 200]
                                             [--database-url URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from scratch import connect, postgres_server, progress, scratch_database

from service import db
from service.web import gauges

DATABASE = "hubspot_webhooks_bench_metrics"
GOAL_MS = 50.0
PORTALS = 20

# Status by position: the first 0.05% dead, then failed, pending, ignored; the rest done.
_FILL_INBOX = """
INSERT INTO inbox_events (
    portal_id, subscription_id, event_id, object_id, occurred_at, subscription_type,
    signature_version, received_at, payload, status, attempts, next_attempt_at, last_error,
    processed_at
)
SELECT 62500 + g % {portals}, 1000 + g % 7, g, 100000 + g % 250000,
       1795564800000 + g,
       (ARRAY['contact.propertyChange', 'deal.propertyChange', 'company.creation',
              'contact.associationChange', 'object.propertyChange'])[1 + g % 5],
       'v3', received, jsonb_build_object(
           'eventId', g, 'subscriptionId', 1000 + g % 7, 'portalId', 62500 + g % {portals},
           'appId', 1234567, 'occurredAt', 1795564800000 + g,
           'subscriptionType', 'contact.propertyChange', 'attemptNumber', 0,
           'objectId', 100000 + g % 250000, 'changeSource', 'CRM_UI',
           'propertyName', 'lifecyclestage', 'propertyValue', 'marketingqualifiedlead'),
       status,
       CASE WHEN status IN ('failed', 'dead') THEN 3 WHEN status = 'pending' THEN 0 ELSE 1 END,
       CASE WHEN status = 'failed' THEN now() + interval '1 minute' * (g % 30 - 10)
            ELSE received END,
       CASE WHEN status IN ('failed', 'dead') THEN 'KeyError: dealstage' END,
       CASE WHEN status IN ('done', 'ignored') THEN received + interval '1 millisecond' * (g % 900)
       END
FROM (
    SELECT g,
           CASE WHEN g <= n * 0.0005 THEN 'dead'
                WHEN g <= n * 0.002 THEN 'failed'
                WHEN g <= n * 0.005 THEN 'pending'
                WHEN g % 20 = 0 THEN 'ignored'
                ELSE 'done' END AS status,
           CASE WHEN g > n - 20000 THEN now() - interval '5 minutes' * (n - g) / 20000
                ELSE now() - interval '7 days' * (n - g) / n END AS received
    FROM generate_series(1, {rows}) AS g, (SELECT {rows}::float8 AS n) AS total
) AS s
"""
_FILL_OTHERS = """
INSERT INTO action_runs (portal_id, inbox_id, rule, action_index, event_occurred_at, action,
                         object_type, object_id, payload, status, attempts, done_at)
SELECT 62500 + g % {portals}, g, 'won-deal', 0,
       (extract(epoch FROM now()) * 1000)::bigint - g * 1000, 'slack', 'deals', g,
       jsonb_build_object('text', 'Won'),
       CASE WHEN g <= 100 THEN 'dead' WHEN g <= 300 THEN 'failed' WHEN g <= 800 THEN 'pending'
            ELSE 'done' END,
       1, now()
FROM generate_series(1, 200000) AS g;
INSERT INTO hydration_requests (portal_id, object_type, object_id, reason, status, attempts)
SELECT 62500 + g % {portals}, 'contacts', g, 'redacted',
       CASE WHEN g <= 100 THEN 'dead' ELSE 'pending' END, CASE WHEN g <= 100 THEN 10 ELSE 0 END
FROM generate_series(1, 5100) AS g;
INSERT INTO rate_limits (portal_id, bucket, max_calls, window_ms, calls, blocked_until_ms)
SELECT 62500 + p, b, CASE b WHEN 'api' THEN 100 ELSE 4 END,
       CASE b WHEN 'api' THEN 10000 ELSE 1000 END,
       ARRAY(SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint - i * 97
             FROM generate_series(1, 40) AS i),
       CASE WHEN p = 3 THEN (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 5000
            ELSE 0 END
FROM generate_series(0, {portals} - 1) AS p, unnest(ARRAY['api', 'search']) AS b;
INSERT INTO hubspot_tokens (portal_id, access_token, refresh_token, expires_at, needs_reinstall)
SELECT 62500 + p, 'access', 'refresh', now() + interval '30 minutes', p < 2
FROM generate_series(0, {portals} - 1) AS p;
INSERT INTO hubspot_api_calls (portal_id, endpoint, outcome, calls, last_at)
SELECT 62500 + p, e, o, 1000 + p, now() - interval '1 minute' * p
FROM generate_series(0, {portals} - 1) AS p,
     unnest(ARRAY['contacts.batch_read', 'deals.batch_read', 'companies.batch_read',
                  'tasks.create', 'notes.create', 'pipelines.get']) AS e,
     unnest(ARRAY['ok', '429', '500', 'connection_error']) AS o;
INSERT INTO hubspot_api_call_minutes (portal_id, minute, endpoint, outcome, calls)
SELECT 62500 + p, date_trunc('minute', now()) - interval '1 minute' * m, e, o,
       CASE o WHEN 'ok' THEN 20 + (m + p) % 40 ELSE 1 + m % 3 END
FROM generate_series(0, {portals} - 1) AS p, generate_series(0, 1439) AS m,
     unnest(ARRAY['contacts.batch_read', 'deals.batch_read', 'companies.batch_read',
                  'tasks.create', 'notes.create', 'pipelines.get']) AS e,
     unnest(ARRAY['ok', '429']) AS o
WHERE o = 'ok' OR (m + p) % 7 = 0;
INSERT INTO worker_heartbeats (worker_id, host, pid, stages, last_batch_at)
SELECT 'bench:' || w, 'bench', w, ARRAY['apply', 'act', 'hydrate'], now()
FROM generate_series(1, 3) AS w;
"""


def fill(url: str, rows: int) -> None:
    """Load the scratch database, then VACUUM ANALYZE it."""
    with connect(url) as connection:
        started = time.perf_counter()
        connection.execute(_FILL_INBOX.format(rows=rows, portals=PORTALS).encode())
        progress(f"{rows:,} inbox rows in {time.perf_counter() - started:.1f} s")
        connection.execute(_FILL_OTHERS.format(portals=PORTALS).encode())
        connection.execute("VACUUM ANALYZE")
        progress("other tables filled, VACUUM ANALYZE done")


def time_scrapes(engine: sa.Engine, scrapes: int) -> dict[str, dict[str, float]]:
    """Milliseconds per collector read and per whole Prometheus text."""
    collector = gauges.DatabaseCollector(engine)
    registry = CollectorRegistry()
    registry.register(collector)
    collector.read()  # warm the pool and the caches, as a running service has them
    reads: list[float] = []
    texts: list[float] = []
    for _ in range(scrapes):
        started = time.perf_counter()
        collector.read()
        reads.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        generate_latest(registry)
        texts.append((time.perf_counter() - started) * 1000)
    return {"collector_read": _summary(reads), "generate_latest": _summary(texts)}


def explain(engine: sa.Engine) -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of each query of a scrape."""
    plans: dict[str, list[str]] = {}
    with engine.connect() as connection:
        for name, query, params in gauges.queries():
            explained = sa.text(f"EXPLAIN (ANALYZE, COSTS OFF) {query.text}")
            plans[name] = [row[0] for row in connection.execute(explained, params)]
    return plans


def done_counts(engine: sa.Engine) -> dict[str, int]:
    """The done count a scrape reports (estimated) and the exact one."""
    with engine.connect() as connection:
        reported = gauges._by_status(connection, "inbox_events", gauges.INBOX_STATUSES)["done"]
        exact = connection.execute(
            sa.text("SELECT count(*) FROM inbox_events WHERE status = 'done'")
        ).scalar_one()
    return {"reported": reported, "exact": int(exact)}


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)],
        "max_ms": ordered[-1],
    }


def main() -> None:
    """Fill, time, explain, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="inbox rows (1,000,000)")
    parser.add_argument("--scrapes", type=int, default=200, help="timed scrapes (200)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    results: dict[str, Any] = {"rows": args.rows, "scrapes": args.scrapes}
    with postgres_server(args.database_url, "metrics") as (server, where):
        progress(f"database: {where}")
        with scratch_database(server, DATABASE) as url:
            fill(url, args.rows)
            engine = db.create_engine(url, pool_size=1)
            results["timings"] = time_scrapes(engine, args.scrapes)
            results["done"] = done_counts(engine)
            results["plans"] = explain(engine)
            engine.dispose()
    print(f"/metrics database gauges, {args.rows:,} inbox rows, {args.scrapes} scrapes")
    print(f"{'measured':<17} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  goal < {GOAL_MS:.0f} ms")
    for name, figures in results["timings"].items():
        verdict = "PASS" if figures["p99_ms"] < GOAL_MS else "MISS"
        print(
            f"{name:<17} {figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f}"
            f" {figures['max_ms']:>8.2f}  {verdict} (p99)"
        )
    done = results["done"]
    error = abs(done["reported"] - done["exact"]) / max(done["exact"], 1) * 100
    print(
        f"done rows: reported {done['reported']:,} (estimate), exact {done['exact']:,}"
        f" ({error:.2f}% off)"
    )
    for name, plan in results["plans"].items():
        print(f"\n-- {name}")
        for line in plan:
            print(f"   {line}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
