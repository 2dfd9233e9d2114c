"""Disk benchmark: what a million HubSpot events take in inbox_events, and a million records in
the mirror's crm_objects (docs/scaling.md).

On a fresh scratch database (migrated, `synchronous_commit=on`, autovacuum as configured, dropped
at the end):

1. **backlog**: `--events` HubSpot-shaped events (property changes, creations and association
   changes of contacts, companies and deals over `--portals` portals, as HubSpot delivers them)
   are stored through the service's own insert path (`inbox.parse_batch` and
   `inbox.record_delivery`, 100 events per delivery) and left pending: what a backlog costs.
2. **processed**: the table is emptied and the same events are stored again, each chunk of
   `--chunk` events settled `done` right after it is stored, 500 rows per transaction (the
   worker's batch: its claim statement, and the columns `inbox.settle` writes), and the table
   vacuumed whenever autovacuum's default threshold is passed (50 + 20% of the rows dead), so
   updates, dead row versions and vacuums interleave with ingest as in a running service: what
   a day of traffic costs before retention drops it.
3. **mirror**: `--records` contact records (12 properties, as a batch read returns them) are
   written through `mirror.snapshots.apply_snapshots`, 100 per transaction (one batch read),
   then `VACUUM`: what the mirror costs per million records.

For each it prints the heap, TOAST and index sizes (summed over partitions when the table is
partitioned), `pg_total_relation_size`, each index, bytes per row and the time taken.

    .venv/bin/python bench/disk.py [--events 1000000] [--records 1000000] [--portals 20]
                                   [--database-url URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import scratch
import sqlalchemy as sa

from service import db, inbox
from service.mirror.snapshots import Snapshot, apply_snapshots

SCRATCH_DATABASE = "hubspot_webhooks_bench_disk"
DELIVERY = 100  # events per delivery: HubSpot's maximum
SETTLE_BATCH = 500  # rows per settling transaction: the worker's default batch
SNAPSHOT_BATCH = 100  # records per batch read
APP_ID = 1_234_567
BASE_MS = 1_795_564_800_000  # 2026-11-25T00:00:00Z
DAY_MS = 86_400_000
MIB = 1024 * 1024

FIRST = ("Ada", "Grace", "José", "Zoë", "Linus", "Margaret", "Chidi", "Anaïs", "Wei", "Sam")
LAST = ("Lovelace", "Hopper", "García", "Müller", "Okafor", "Hamilton", "Nakamura", "Smith")
STAGES = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity")
SOURCES = ("CRM_UI", "CRM_UI", "IMPORT", "INTEGRATION", "API", "FORM")
CONTACT_PROPERTIES = ("email", "firstname", "lastname", "lifecyclestage", "phone", "jobtitle")
DEAL_PROPERTIES = ("dealstage", "amount", "closedate", "hubspot_owner_id")
COMPANY_PROPERTIES = ("name", "domain", "numberofemployees", "hubspot_owner_id")

_SETTLE_DONE = sa.text(
    """
    UPDATE inbox_events SET status = 'done', attempts = attempts + 1, last_error = NULL,
                            processed_at = now()
    WHERE id IN (
        SELECT id FROM inbox_events
        WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
        ORDER BY next_attempt_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    """
)
# A partitioned table (or index) has no storage of its own: its leaf partitions are summed.
_LEAVES = """
    SELECT p.relid FROM pg_partition_tree({rel}) AS p WHERE p.isleaf
    UNION ALL
    SELECT c.oid FROM pg_class c WHERE c.oid = {rel} AND c.relkind NOT IN ('p', 'I')
"""
_SIZES = f"""
    SELECT coalesce(sum(pg_relation_size(t.relid)), 0),
           coalesce(sum(pg_total_relation_size(c.reltoastrelid))
                    FILTER (WHERE c.reltoastrelid <> 0), 0),
           coalesce(sum(pg_indexes_size(t.relid)), 0),
           coalesce(sum(pg_total_relation_size(t.relid)), 0),
           coalesce(sum(s.n_live_tup), 0), coalesce(sum(s.n_dead_tup), 0)
    FROM ({_LEAVES.format(rel="%(table)s::regclass")}) AS t
    JOIN pg_class c ON c.oid = t.relid
    LEFT JOIN pg_stat_user_tables s ON s.relid = t.relid
"""
_INDEX_SIZES = f"""
    SELECT i.relname, (SELECT coalesce(sum(pg_relation_size(p.relid)), 0)
                       FROM ({_LEAVES.format(rel="i.oid")}) AS p)
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid = %(table)s::regclass
    ORDER BY i.relname
"""


@dataclass
class Sizes:
    """A table's footprint on disk, in bytes, and its rows."""

    scenario: str
    table: str
    rows: int
    seconds: float
    heap: int
    toast: int
    indexes: int
    total: int
    live: int
    dead: int
    row_bytes: float  # mean pg_column_size of a live row: the data, without page overhead
    each_index: dict[str, int]

    def per_million(self, value: int) -> float:
        """`value` scaled to a million rows, in MiB."""
        return value / MIB * 1_000_000 / max(self.rows, 1)


# --- HubSpot-shaped events -------------------------------------------------------------------


def events(count: int, *, portals: int, seed: int) -> Iterator[dict[str, Any]]:
    """`count` events as HubSpot sends them: ~75% property changes, ~10% creations, ~10%
    contact-to-company association changes, ~5% deletions; objects mostly contacts."""
    rng = random.Random(seed)
    instants = sorted(rng.randrange(DAY_MS) for _ in range(count))
    for index, instant in enumerate(instants):
        object_type = rng.choices(("contact", "deal", "company"), weights=(70, 15, 15))[0]
        event: dict[str, Any] = {
            "eventId": 4_000_000_000 + index,
            "subscriptionId": 3_200_000 + rng.randrange(40),
            "portalId": 62_500 + rng.randrange(portals),
            "appId": APP_ID,
            "occurredAt": BASE_MS + instant,
            "attemptNumber": 0,
            "objectId": rng.randrange(100_001, 150_000_000),
            "changeSource": rng.choice(SOURCES),
            "sourceId": f"userId:{rng.randrange(1_000_000, 9_999_999)}",
        }
        roll = rng.random()
        if roll < 0.75:
            properties = {
                "contact": CONTACT_PROPERTIES,
                "deal": DEAL_PROPERTIES,
                "company": COMPANY_PROPERTIES,
            }[object_type]
            name = rng.choice(properties)
            event["subscriptionType"] = f"{object_type}.propertyChange"
            event["propertyName"] = name
            event["propertyValue"] = _value(rng, name)
        elif roll < 0.85:
            event["subscriptionType"] = f"{object_type}.creation"
        elif roll < 0.95:
            event["subscriptionType"] = "contact.associationChange"
            event["associationType"] = "CONTACT_TO_COMPANY"
            event["fromObjectId"] = event.pop("objectId")
            event["toObjectId"] = rng.randrange(5_000_001, 90_000_000)
            event["associationRemoved"] = rng.random() < 0.1
            event["isPrimaryAssociation"] = rng.random() < 0.8
        else:
            event["subscriptionType"] = f"{object_type}.deletion"
        yield event


def _value(rng: random.Random, name: str) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    values = {
        "email": f"{first.lower()}.{last.lower()}{rng.randrange(1000)}@example.com",
        "firstname": first,
        "lastname": last,
        "lifecyclestage": rng.choice(STAGES),
        "phone": f"+1 617 555 {rng.randrange(10_000):04d}",
        "jobtitle": rng.choice(("CTO", "Head of Sales", "Marketing Manager", "Founder")),
        "dealstage": rng.choice(("appointmentscheduled", "qualifiedtobuy", "closedwon")),
        "amount": f"{rng.randrange(100, 250_000)}.00",
        "closedate": f"{BASE_MS + rng.randrange(90 * DAY_MS)}",
        "hubspot_owner_id": str(rng.randrange(10_000_000, 99_999_999)),
        "name": f"{last} & Co",
        "domain": f"{last.lower()}-{rng.randrange(10_000)}.example.com",
        "numberofemployees": str(rng.randrange(1, 5_000)),
    }
    return values[name]


def deliveries(count: int, *, portals: int, seed: int) -> Iterator[bytes]:
    """The events as webhook bodies of up to 100 events each."""
    chunk: list[dict[str, Any]] = []
    for event in events(count, portals=portals, seed=seed):
        chunk.append(event)
        if len(chunk) == DELIVERY:
            yield orjson.dumps(chunk)
            chunk = []
    if chunk:
        yield orjson.dumps(chunk)


# --- the scenarios ---------------------------------------------------------------------------


async def _store(url: str, bodies: Sequence[bytes]) -> int:
    connection = await psycopg.AsyncConnection.connect(db.libpq_url(url), autocommit=True)
    stored = 0
    async with connection:
        for body in bodies:
            result = await inbox.record_delivery(
                connection, inbox.parse_batch(body), signature_version="v3"
            )
            stored += result.stored
    return stored


def store_and_settle(url: str, args: argparse.Namespace, *, settle: bool) -> tuple[int, float]:
    """Store the events through the ingest path, settling each chunk when asked; returns the
    rows stored and the seconds taken."""
    engine = db.create_engine(url, pool_size=1)
    started = time.perf_counter()
    stored = since_vacuum = 0
    chunk: list[bytes] = []
    per_chunk = max(1, args.chunk // DELIVERY)
    try:
        for body in deliveries(args.events, portals=args.portals, seed=args.seed):
            chunk.append(body)
            if len(chunk) < per_chunk:
                continue
            stored += asyncio.run(_store(url, chunk))
            chunk = []
            if settle:
                since_vacuum += _settle_all(engine)
                since_vacuum = _vacuum_as_autovacuum_would(url, since_vacuum, stored)
        if chunk:
            stored += asyncio.run(_store(url, chunk))
            if settle:
                _settle_all(engine)
    finally:
        engine.dispose()
    return stored, time.perf_counter() - started


def _settle_all(engine: sa.Engine) -> int:
    """Claim and settle every due row, the worker's batch at a time; returns how many."""
    settled = 0
    while True:
        with engine.begin() as connection:
            count = connection.execute(_SETTLE_DONE, {"limit": SETTLE_BATCH}).rowcount
        if count == 0:
            return settled
        settled += count


def _vacuum_as_autovacuum_would(url: str, dead: int, live: int) -> int:
    """VACUUM once the dead row versions pass autovacuum's default threshold (50 + 20% of the
    table); returns the dead versions left. Done here because the server this was written on
    runs with autovacuum off, and a running service has it on."""
    if dead <= 50 + 0.2 * live:
        return dead
    with scratch.connect(url) as connection:
        connection.execute("VACUUM inbox_events")
    return 0


def write_records(url: str, count: int, *, seed: int) -> float:
    """Write `count` contact records through the hydration path; returns the seconds taken."""
    rng = random.Random(seed)
    engine = db.create_engine(url, pool_size=1)
    started = time.perf_counter()
    try:
        for first_id in range(0, count, SNAPSHOT_BATCH):
            batch = []
            for object_id in range(first_id + 1, min(first_id + SNAPSHOT_BATCH, count) + 1):
                updated = BASE_MS + rng.randrange(DAY_MS)
                properties: dict[str, str | None] = {
                    name: _value(rng, name) for name in CONTACT_PROPERTIES
                }
                properties |= {
                    "city": rng.choice(("Boston", "Dublin", "Berlin", "São Paulo", "Tokyo")),
                    "company": f"{rng.choice(LAST)} & Co",
                    "hs_lead_status": rng.choice(("NEW", "OPEN", "IN_PROGRESS", "CONNECTED")),
                    "createdate": f"{updated - rng.randrange(365 * DAY_MS)}",
                    "lastmodifieddate": f"{updated}",
                    "hs_object_id": str(object_id),
                }
                batch.append(Snapshot(object_id, properties, updated))
            with engine.begin() as connection:
                apply_snapshots(connection, 62_500 + first_id % 20, "contacts", batch)
    finally:
        engine.dispose()
    return time.perf_counter() - started


def measure(url: str, scenario: str, table: str, rows: int, seconds: float) -> Sizes:
    """The table's sizes now (statistics flushed by an ANALYZE first)."""
    with scratch.connect(url) as connection:
        connection.execute(f"ANALYZE {table}")
        time.sleep(1.0)  # the cumulative statistics (live/dead rows) are flushed every second
        row = connection.execute(_SIZES, {"table": table}).fetchone()
        assert row is not None
        each = {
            str(name): int(size)
            for name, size in connection.execute(_INDEX_SIZES, {"table": table}).fetchall()
        }
        mean = connection.execute(f"SELECT avg(pg_column_size(t.*)) FROM {table} AS t").fetchone()
    heap, toast, indexes, total, live, dead = (int(v) for v in row)
    row_bytes = float(mean[0] or 0) if mean else 0.0
    return Sizes(
        scenario, table, rows, seconds, heap, toast, indexes, total, live, dead, row_bytes, each
    )


def payload_bytes(url: str) -> tuple[float, float]:
    """Mean JSON text length and mean stored jsonb size of an inbox payload."""
    with scratch.connect(url) as connection:
        row = connection.execute(
            "SELECT avg(length(payload::text)), avg(pg_column_size(payload)) FROM inbox_events"
        ).fetchone()
    assert row is not None
    return float(row[0] or 0), float(row[1] or 0)


def truncate(url: str) -> None:
    """Empty the inbox (and its identity) for the next scenario."""
    with scratch.connect(url) as connection:
        connection.execute("TRUNCATE inbox_events RESTART IDENTITY")
        with suppress(psycopg.errors.InsufficientPrivilege):
            connection.execute("CHECKPOINT")


# --- output --------------------------------------------------------------------------------


def server_facts(url: str) -> dict[str, str]:
    """The server's version and the settings that decide sizes."""
    facts: dict[str, str] = {}
    with scratch.connect(url) as connection:
        for name in ("server_version", "autovacuum", "shared_buffers", "block_size"):
            row = connection.execute(f"SHOW {name}").fetchone()
            facts[name] = str(row[0]) if row else "?"
    return facts


def print_sizes(results: Sequence[Sizes]) -> None:
    """One line per scenario, MiB as measured and per million rows, then each index."""
    print(
        f"{'scenario':<10} {'table':<13} {'rows':>10} {'seconds':>8} {'heap':>8} {'toast':>7}"
        f" {'indexes':>8} {'total':>8} {'dead':>8} {'row B':>6}   {'MiB per million rows':>22}"
    )
    for r in results:
        print(
            f"{r.scenario:<10} {r.table:<13} {r.rows:>10,} {r.seconds:>8.1f}"
            f" {r.heap / MIB:>8.1f} {r.toast / MIB:>7.1f} {r.indexes / MIB:>8.1f}"
            f" {r.total / MIB:>8.1f} {r.dead:>8,} {r.row_bytes:>6.0f}"
            f"   total {r.per_million(r.total):>7.1f}"
            f" ({r.total / max(r.rows, 1):,.0f} B/row)"
        )
    print(
        "  sizes in MiB; heap: the main fork; toast: with its index; dead: dead row versions"
        " (estimated);\n  row B: mean size of a live row's data (pg_column_size), page and"
        " free space aside"
    )
    for r in results:
        indexes = ", ".join(f"{name} {size / MIB:.1f}" for name, size in r.each_index.items())
        print(f"  {r.scenario} {r.table} indexes (MiB): {indexes}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="bench/disk.py",
        description="Disk per million events in inbox_events and per million records in "
        "crm_objects (see docs/scaling.md).",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to use (a scratch database is created on it and dropped); "
        "default $BENCH_DATABASE_URL, else $DATABASE_URL, else the local server on "
        "127.0.0.1:5432 if it answers, else an embedded server",
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="inbox events to store")
    parser.add_argument(
        "--records", type=int, default=1_000_000, help="mirror records to write (0: skip)"
    )
    parser.add_argument("--portals", type=int, default=20, help="portals the events come from")
    parser.add_argument(
        "--chunk", type=int, default=10_000, help="processed scenario: events stored per chunk"
    )
    parser.add_argument("--seed", type=int, default=20261130, help="random seed")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.events < 1 or args.records < 0 or args.portals < 1 or args.chunk < DELIVERY:
        parser.error("--events and --portals must be positive, --chunk at least 100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios and print what each left on disk."""
    args = parse_args(argv)
    configured = (
        args.database_url or os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    )
    started = datetime.now(UTC)
    load1, load5, _ = os.getloadavg()
    results: list[Sizes] = []
    with ExitStack() as stack:
        server_url, source = stack.enter_context(scratch.postgres_server(configured, "disk"))
        url = stack.enter_context(scratch.scratch_database(server_url, SCRATCH_DATABASE))
        facts = server_facts(url)
        print(
            f"bench/disk.py  {started:%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  Python"
            f" {platform.python_version()}  PostgreSQL {facts['server_version']} ({source})"
        )
        print(
            f"autovacuum={facts['autovacuum']}  shared_buffers={facts['shared_buffers']}"
            f"  load average before: {load1:.2f} (1 min), {load5:.2f} (5 min)"
        )
        scratch.progress(f"backlog: storing {args.events:,} events, 100 per delivery")
        stored, seconds = store_and_settle(url, args, settle=False)
        results.append(measure(url, "backlog", "inbox_events", stored, seconds))
        text_bytes, jsonb_bytes = payload_bytes(url)
        truncate(url)
        scratch.progress(f"processed: storing and settling {args.events:,} events")
        stored, seconds = store_and_settle(url, args, settle=True)
        results.append(measure(url, "processed", "inbox_events", stored, seconds))
        if args.records:
            scratch.progress(f"mirror: writing {args.records:,} contact records")
            seconds = write_records(url, args.records, seed=args.seed)
            with scratch.connect(url) as connection:
                connection.execute("VACUUM crm_objects")
            results.append(measure(url, "mirror", "crm_objects", args.records, seconds))
    print(
        f"inbox payload: {text_bytes:.0f} bytes of JSON text, {jsonb_bytes:.0f} bytes as stored"
        " jsonb (mean)\n"
    )
    print_sizes(results)
    if args.json is not None:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "postgres": {"source": source, **facts},
            "load_average": [load1, load5],
            "payload": {"json_text_bytes": text_bytes, "jsonb_bytes": jsonb_bytes},
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
