"""Settle benchmark: what recording a batch's outcomes costs on the partitioned inbox.

inbox_events is partitioned by day of occurredAt and its `id` has a plain index per partition.
The worker settles a claimed batch with one UPDATE joined to the outcomes; this compares, in one
run, on the same rows:

- `by id`: the join on `id` alone (the statement before issue 11's follow-up), which probes the
  id index of every partition for every row;
- `by (id, occurred_at)`: `service.inbox.settle` as it is, the partition key in the join, so
  run-time partition pruning leaves one index probe per row.

On a scratch database the inbox gets `--partitions` partitions (the old table, days ahead and
the default), `--rows` settled rows in each, and `--batch` pending rows spread over all of them
(the worst case: a batch usually spans one or two days). Each round claims the batch with
`inbox.claim_due`, times one settle statement and rolls back, alternating the two; then an
EXPLAIN (ANALYZE) of each counts the index probes. Figures are printed, never asserted.

    .venv/bin/python bench/settle.py [--partitions 12] [--batch 500] [--rounds 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import scratch
import sqlalchemy as sa

from service import db, inbox, partitions

SCRATCH_DATABASE = "hubspot_webhooks_bench_settle"
DAY_MS = 86_400_000
JOIN = (
    "WHERE i.id = r.id AND i.occurred_at = r.occurred_at AND i.occurred_at BETWEEN :low AND :high"
)
STATEMENTS = {
    "by id": inbox._SETTLE.text.replace(JOIN, "WHERE i.id = r.id"),  # the statement before
    "by (id, occurred_at)": inbox._SETTLE.text,
}


JOINS = {"Nested Loop", "Hash Join", "Merge Join"}


class BenchError(Exception):
    """The scratch inbox could not be laid out as asked."""


def lay_out(url: str, args: argparse.Namespace) -> list[partitions.Partition]:
    """`--partitions` partitions in all (the default included), each holding rows; the batch's
    pending rows spread over every one of them."""
    engine = db.create_engine(url)
    try:
        ahead = args.partitions - 2  # besides the old table and the default
        scheme = dataclasses.replace(inbox.partitioning(30 * 86_400), ahead=ahead)
        partitions.maintain(engine, scheme)
        with engine.connect() as connection:
            ranges = partitions.attached(connection, scheme)
    finally:
        engine.dispose()
    if len(ranges) + 1 != args.partitions:
        raise BenchError(f"{len(ranges) + 1} partitions, not {args.partitions}")
    # A day in each range partition, and one past them all for the default.
    days = [(p.upper or 0) - DAY_MS for p in ranges] + [(ranges[-1].upper or 0) + DAY_MS]
    with psycopg.connect(db.libpq_url(url), autocommit=True) as connection:
        connection.execute(
            """
            INSERT INTO inbox_events (portal_id, subscription_id, event_id, object_id,
                occurred_at, subscription_type, signature_version, payload, status,
                processed_at)
            SELECT 62515, 1, n, n %% 50000, day + n %% 86400000, 'contact.propertyChange', 'v3',
                   jsonb_build_object('eventId', n, 'portalId', 62515, 'propertyName', 'email'),
                   CASE WHEN n <= %(batch)s THEN 'pending' ELSE 'done' END,
                   CASE WHEN n <= %(batch)s THEN NULL ELSE now() END
            FROM generate_series(1, %(total)s) AS n,
                 LATERAL (SELECT (%(days)s::bigint[])[1 + n %% CASE WHEN n <= %(batch)s
                    THEN %(spread)s ELSE %(count)s END] AS day) d
            """,
            {
                "batch": args.batch,
                "total": args.rows * len(days),
                "days": days,
                "count": len(days),
                "spread": min(args.spread or len(days), len(days)),
            },
        )
        connection.execute("VACUUM ANALYZE inbox_events")
    return ranges


def outcomes_json(claimed: list[inbox.Claimed]) -> str:
    """The batch's outcomes as `inbox.settle` sends them: every third failed, the rest done."""
    return json.dumps(
        [
            {
                "id": c.id,
                "occurred_at": c.occurred_at,
                "status": "failed" if n % 3 == 0 else "done",
                "error": "ValueError: boom" if n % 3 == 0 else None,
            }
            for n, c in enumerate(claimed)
        ]
    )


def settle_once(engine: sa.Engine, statement: str, batch: int, *, explain: bool) -> Any:
    """Claim the batch, run one settle statement (timed, or its EXPLAIN ANALYZE), roll back."""
    with engine.connect() as connection, connection.begin() as transaction:
        claimed = inbox.claim_due(connection, batch)
        if len(claimed) != batch:
            raise BenchError(f"claimed {len(claimed)} rows, not {batch}")
        stamps = [c.occurred_at for c in claimed]
        params = {"rows": outcomes_json(claimed), "max_attempts": 10}
        params |= {"low": min(stamps), "high": max(stamps)}
        if explain:
            sql = f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"
            plan = connection.execute(sa.text(sql), params).scalar_one()
            transaction.rollback()
            return plan[0]
        started = time.perf_counter()
        updated = connection.execute(sa.text(statement), params).rowcount
        seconds = time.perf_counter() - started
        transaction.rollback()
    if updated != batch:
        raise BenchError(f"settled {updated} rows, not {batch}")
    return seconds


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def probes(explained: dict[str, Any]) -> dict[str, Any]:
    """How the statement reached inbox_events: scans run, partitions touched, join method."""
    scans = [
        n
        for n in nodes(explained["Plan"])
        if str(n.get("Relation Name", "")).startswith("inbox_events") and "Scan" in n["Node Type"]
    ]
    return {
        "scans": sum(int(n.get("Actual Loops", 0)) for n in scans),
        "partitions_touched": len({n["Relation Name"] for n in scans if n.get("Actual Loops")}),
        "scan_types": sorted({n["Node Type"] for n in scans}),
        "joins": sorted(
            {n["Node Type"] for n in nodes(explained["Plan"]) if JOINS & {n["Node Type"]}}
        ),
        "server_ms": round(float(explained["Execution Time"]), 2),
    }


def measure(url: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Alternate the statements for `--rounds` rounds; then explain each."""
    engine = db.create_engine(url)
    seconds: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    results: dict[str, dict[str, Any]] = {}
    try:
        for round_ in range(args.rounds):
            order = list(STATEMENTS) if round_ % 2 == 0 else list(STATEMENTS)[::-1]
            for name in order:
                seconds[name].append(
                    settle_once(engine, STATEMENTS[name], args.batch, explain=False)
                )
            if round_ % 10 == 9:  # the rolled-back versions, as autovacuum would
                with psycopg.connect(db.libpq_url(url), autocommit=True) as connection:
                    connection.execute("VACUUM inbox_events")
        for name, statement in STATEMENTS.items():
            explained = settle_once(engine, statement, args.batch, explain=True)
            times = sorted(seconds[name])
            results[name] = {
                "median_ms": round(statistics.median(times) * 1000, 2),
                "p90_ms": round(times[int(len(times) * 0.9) - 1] * 1000, 2),
                "min_ms": round(times[0] * 1000, 2),
                **probes(explained),
            }
    finally:
        engine.dispose()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a PostgreSQL server (default: local or embedded)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions, default included")
    parser.add_argument("--rows", type=int, default=20_000, help="rows in each partition")
    parser.add_argument("--batch", type=int, default=500, help="rows settled by one statement")
    parser.add_argument(
        "--spread", type=int, default=0, help="partitions the batch spans (default: all of them)"
    )
    parser.add_argument("--rounds", type=int, default=40, help="timed settles of each statement")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.partitions < 3:
        parser.error("--partitions: at least 3 (the old table, a day ahead, the default)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Lay the inbox out, measure both statements, print the figures."""
    args = parse_args(argv)
    if len(set(STATEMENTS.values())) != len(STATEMENTS):
        print("bench/settle.py: inbox._SETTLE's join changed; update JOIN", file=sys.stderr)
        return 1
    configured = (
        args.database_url or os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    )
    started = datetime.now(UTC)
    try:
        with ExitStack() as stack:
            server_url, source = stack.enter_context(scratch.postgres_server(configured, "settle"))
            url = stack.enter_context(scratch.scratch_database(server_url, SCRATCH_DATABASE))
            scratch.progress(f"laying out {args.partitions} partitions of {args.rows} rows")
            lay_out(url, args)
            scratch.progress(f"{args.rounds} rounds of each statement")
            results = measure(url, args)
    except BenchError as exc:
        print(f"bench/settle.py: {exc}", file=sys.stderr)
        return 1
    print(
        f"bench/settle.py {started:%Y-%m-%d %H:%M} UTC, PostgreSQL {source}, {os.cpu_count()} CPUs;"
        f" {args.partitions} partitions of {args.rows} rows, {args.batch} rows settled at once,"
        f" spread over {min(args.spread or args.partitions, args.partitions)} partitions"
    )
    for name, figures in results.items():
        print(
            f"settle {name:<21} median {figures['median_ms']:6.2f} ms, p90"
            f" {figures['p90_ms']:6.2f} ms, min {figures['min_ms']:6.2f} ms; EXPLAIN ANALYZE:"
            f" {figures['scans']} partition scans over {figures['partitions_touched']} partitions"
            f" ({', '.join(figures['joins'] + figures['scan_types'])}), {figures['server_ms']} ms"
        )
    before, after = results["by id"], results["by (id, occurred_at)"]
    print(f"ratio by id / by (id, occurred_at): {before['median_ms'] / after['median_ms']:.2f}")
    if args.json is not None:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "options": {k: str(v) for k, v in vars(args).items()},
            "results": results,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
