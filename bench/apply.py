"""Apply benchmark: how fast the worker drains a backlog of stored HubSpot events into the mirror.

In one run, on a real PostgreSQL with synchronous_commit=on, in a scratch database, for each
backlog (by default 200,000 events over 20,000 contacts):

- `property`: contact.propertyChange events only (email, firstname, lastname, ...);
- `mixed`: ~10% contact.creation, ~10% contact.associationChange (CONTACT_TO_COMPANY), the rest
  property changes;

the backlog is loaded through the ingest SQL (`service.inbox.record_delivery`, 1,000 events per
statement; not timed), then drained by:

1. one `service.worker.apply.Worker(engine, batch_size=500).drain()` in this process (the headline),
   and again with the other `--batch-sizes` for comparison;
2. two worker processes started together (each a `Worker.drain()` on its own engine, as
   `python -m service worker --drain` runs it), timed from the moment both are released;
3. the bare loop (issue 13's baseline, what the database itself allows): claim 500 rows with
   FOR UPDATE SKIP LOCKED, merge each object's changes into a plain jsonb row of a table of its
   own (`bench_bare_objects`: one upsert, no versions), mark them done, commit; plain psycopg;
4. the naive baseline: one transaction per event (claim 1 row with FOR UPDATE SKIP LOCKED,
   `mirror.apply_events` on a one-event list, `inbox.settle`, commit), on a prefix of the backlog
   (`--naive-events` or `--naive-seconds`, whichever comes first), its rate extrapolated.

After every run the inbox and the mirror are checked against a last-writer-wins replay of the
applied events in Python, so a broken run is reported as an error, never as a figure. It prints
events/s, time to drain and the ratios against the goals (printed, never asserted).

With `--dedupe` every worker runs as HUBSPOT_EVENT_SOURCE=both runs it (`dedupe_changes`): each
applied event also claims its change in applied_changes (service/changes.py), and the run checks
that every event claimed one. Run once with and once without to read the overhead.

    .venv/bin/python bench/apply.py [--events 200000] [--contacts 20000] [--dedupe]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import scratch
import sqlalchemy as sa

from service import db, inbox, mirror
from service.events import normalise
from service.worker.apply import Worker

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event as ProcessEvent

ROOT = Path(__file__).resolve().parent.parent
SCRATCH_DATABASE = "hubspot_webhooks_bench_apply"
HEADLINE_BATCH_SIZE = 500  # the worker's default (WORKER_BATCH_SIZE)
LOAD_BATCH = 1_000  # events per record_delivery statement while loading the backlog
# One worker, batch 500, per backlog (issue 13).
GOAL_EVENTS_PER_SECOND = {"property": 20_000.0, "mixed": 15_000.0}
GOAL_RATIO = 10.0  # one worker / naive loop
GOAL_BARE_RATIO = 0.55  # one worker / the bare loop, property backlog (issue 13)
BARE_RUN = "bare loop (claim, merge, done)"
BUSY_CORES = 0.5  # other load above this during the headline run is called out
MAX_RUN_SECONDS = 1_800.0  # a drain that takes longer than this is broken
PORTAL_ID = 62515
APP_ID = 1_234_567
BASE_MS = 1_795_564_800_000  # 2026-11-25T00:00:00Z: occurredAt spreads over the next day
DAY_MS = 86_400_000

FIRST_NAMES = ("Ada", "Grace", "José", "Zoë", "Linus", "Margaret", "Chidi", "Anaïs", "Wei", "Sam")
LAST_NAMES = ("Lovelace", "Hopper", "García", "Müller", "Okafor", "Hamilton", "Nakamura", "Smith")
LIFECYCLE = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity")
LEAD_STATUS = ("NEW", "OPEN", "IN_PROGRESS", "OPEN_DEAL", "UNQUALIFIED", "CONNECTED")
JOB_TITLES = ("CTO", "Head of Sales", "Marketing Manager", "Founder", "Account Executive")
CITIES = ("Boston", "Dublin", "Berlin", "São Paulo", "Tokyo", "Lagos", "Montréal")
CHANGE_SOURCES = ("CRM_UI", "CRM_UI", "IMPORT", "INTEGRATION", "API", "FORM")
PROPERTIES = (
    "email",
    "firstname",
    "lastname",
    "lifecyclestage",
    "phone",
    "jobtitle",
    "city",
    "hs_lead_status",
    "company",
)
# A propertyChange subscription names one property, so each property has its own id.
SUBSCRIPTION_IDS = {name: 3_200_000 + index for index, name in enumerate(PROPERTIES)}
CREATION_SUBSCRIPTION = 3_200_100
ASSOCIATION_SUBSCRIPTION = 3_200_101


class BenchError(Exception):
    """The benchmark could not be set up, or a run left the database wrong."""


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# --- the backlog ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """HubSpot events as delivered, in delivery order, and what they are about."""

    name: str
    events: list[dict[str, Any]]
    contacts: int
    companies: int

    def kinds(self) -> dict[str, int]:
        """Events by subscriptionType."""
        return dict(Counter(str(e["subscriptionType"]) for e in self.events))


class _Generator:
    def __init__(self, *, events: int, contacts: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count = events
        self.contact_ids = self.rng.sample(range(100_001, 150_000_000), contacts)
        # Distinct instants, so last-writer-wins never needs its tie-break here.
        self.instants = sorted(self.rng.sample(range(DAY_MS), events))
        self.next_event_id = 4_000_000_000

    def objects(self, count: int) -> list[int]:
        """`count` contact ids, every contact at least once when count allows, shuffled."""
        ids = [self.contact_ids[i % len(self.contact_ids)] for i in range(count)]
        self.rng.shuffle(ids)
        return ids

    def event(self, subscription_type: str, subscription_id: int, **fields: Any) -> dict[str, Any]:
        rng = self.rng
        event: dict[str, Any] = {
            "eventId": self.next_event_id,
            "subscriptionId": subscription_id,
            "portalId": PORTAL_ID,
            "appId": APP_ID,
            "occurredAt": 0,  # set in deliver()
            "subscriptionType": subscription_type,
            "attemptNumber": 0,
            **fields,
            "changeSource": rng.choice(CHANGE_SOURCES),
            "sourceId": f"userId:{rng.randrange(1_000_000, 9_999_999)}",
        }
        self.next_event_id += 1
        return event

    def property_change(self, object_id: int) -> dict[str, Any]:
        name = self.rng.choice(PROPERTIES)
        return self.event(
            "contact.propertyChange",
            SUBSCRIPTION_IDS[name],
            objectId=object_id,
            propertyName=name,
            propertyValue=self.value(name, object_id),
        )

    def value(self, name: str, object_id: int) -> str:
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        if name == "email":
            return f"{first.lower()}.{last.lower()}{rng.randrange(1000)}@example.com"
        if name == "phone":
            return f"+1 617 555 {rng.randrange(10_000):04d}"
        if name == "company":
            return f"{last} & Co {object_id % 97}"
        choices = {
            "firstname": FIRST_NAMES,
            "lastname": LAST_NAMES,
            "lifecyclestage": LIFECYCLE,
            "jobtitle": JOB_TITLES,
            "city": CITIES,
            "hs_lead_status": LEAD_STATUS,
        }
        return rng.choice(choices[name])

    def deliver(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Give the events increasing occurredAt, then HubSpot's delivery order.

        HubSpot delivers roughly in time order, each event up to a minute late.
        """
        for event, instant in zip(events, self.instants, strict=True):
            event["occurredAt"] = BASE_MS + instant
        return sorted(events, key=lambda e: int(e["occurredAt"]) + self.rng.randrange(60_000))


def property_backlog(*, events: int, contacts: int, seed: int) -> Backlog:
    """`events` contact.propertyChange events spread over `contacts` contacts."""
    gen = _Generator(events=events, contacts=contacts, seed=seed)
    made = [gen.property_change(object_id) for object_id in gen.objects(events)]
    return Backlog("property", gen.deliver(made), contacts=min(events, contacts), companies=0)


def mixed_backlog(*, events: int, contacts: int, seed: int) -> Backlog:
    """~10% creations, ~10% CONTACT_TO_COMPANY association changes, the rest property changes.

    Each contact is created once (when there are enough creations), before its first change; a
    contact mostly joins its own company, sometimes another; one association event in ten is a
    removal.
    """
    gen = _Generator(events=events, contacts=contacts, seed=seed)
    rng = gen.rng
    companies = max(1, contacts // 10)
    company_ids = rng.sample(range(5_000_001, 90_000_000), companies)
    home = {c: rng.choice(company_ids) for c in gen.contact_ids}
    creations = events // 10
    associations = events // 10
    kinds = ["creation"] * creations + ["association"] * associations
    kinds += ["property"] * (events - len(kinds))
    rng.shuffle(kinds)
    created: list[int] = []
    uncreated = gen.objects(creations)
    made: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "creation":
            object_id = uncreated.pop()
            created.append(object_id)
            made.append(gen.event("contact.creation", CREATION_SUBSCRIPTION, objectId=object_id))
            continue
        # Mostly about contacts created earlier, as in a real portal; some about older ones.
        if created and rng.random() >= 0.05:
            object_id = rng.choice(created)
        else:
            object_id = rng.choice(gen.contact_ids)
        if kind == "property":
            made.append(gen.property_change(object_id))
            continue
        own = rng.random() < 0.8
        company = home[object_id] if own else rng.choice(company_ids)
        made.append(
            gen.event(
                "contact.associationChange",
                ASSOCIATION_SUBSCRIPTION,
                associationType="CONTACT_TO_COMPANY",
                fromObjectId=object_id,
                toObjectId=company,
                associationRemoved=rng.random() < 0.1,
                isPrimaryAssociation=own,
            )
        )
    touched = {int(e.get("objectId") or e["fromObjectId"]) for e in made}
    return Backlog("mixed", gen.deliver(made), contacts=len(touched), companies=companies)


# --- what the mirror must hold ----------------------------------------------------------------

AssociationKey = tuple[str, int, str, int, str]


@dataclass
class Expected:
    """The mirror state a last-writer-wins replay of some events gives."""

    properties: dict[int, dict[str, str]] = field(default_factory=dict)
    associations: dict[AssociationKey, tuple[bool, bool]] = field(default_factory=dict)
    hydrations: set[int] = field(default_factory=set)


def expected_state(events: Sequence[dict[str, Any]]) -> Expected:
    """Replay `events` the simple way: per field, the latest occurredAt wins (all distinct here)."""
    expected = Expected()
    latest: dict[int, dict[str, tuple[int, str]]] = {}
    links: dict[AssociationKey, tuple[int, bool, bool]] = {}
    for e in events:
        kind, at = str(e["subscriptionType"]), int(e["occurredAt"])
        if kind == "contact.creation":
            latest.setdefault(int(e["objectId"]), {})
            expected.hydrations.add(int(e["objectId"]))
        elif kind == "contact.propertyChange":
            props = latest.setdefault(int(e["objectId"]), {})
            name, value = str(e["propertyName"]), str(e["propertyValue"])
            if name not in props or (at, value) > props[name]:
                props[name] = (at, value)
        elif kind == "contact.associationChange":
            contact, company = int(e["fromObjectId"]), int(e["toObjectId"])
            state = (at, not e["associationRemoved"], bool(e["isPrimaryAssociation"]))
            for key in (
                ("contacts", contact, "companies", company, "CONTACT_TO_COMPANY"),
                ("companies", company, "contacts", contact, "COMPANY_TO_CONTACT"),
            ):
                if key not in links or state[0] > links[key][0]:
                    links[key] = state
    expected.properties = {
        object_id: {name: value for name, (_, value) in props.items()}
        for object_id, props in latest.items()
    }
    expected.associations = {key: (p, primary) for key, (_, p, primary) in links.items()}
    return expected


def verify(
    url: str, backlog: Backlog, *, applied: int, complete: bool, label: str, claims: int | None
) -> None:
    """Check the inbox and the mirror (and, `claims` given, the applied changes) after a run;
    raise BenchError on any difference."""
    with scratch.connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM applied_changes").fetchone()
        claimed = int(row[0]) if row else 0
        statuses = dict(
            connection.execute("SELECT status, count(*) FROM inbox_events GROUP BY status")
        )
        done_ids = {
            int(r[0])
            for r in connection.execute("SELECT event_id FROM inbox_events WHERE status = 'done'")
        }
        objects = {
            (str(t), int(o)): dict(p)
            for t, o, p in connection.execute(
                "SELECT object_type, object_id, properties FROM crm_objects WHERE NOT archived"
            )
        }
        links = {
            (str(r[0]), int(r[1]), str(r[2]), int(r[3]), str(r[4])): (bool(r[5]), bool(r[6]))
            for r in connection.execute(
                "SELECT from_type, from_id, to_type, to_id, association_type, present, is_primary"
                " FROM crm_associations"
            )
        }
        hydrations = {
            int(r[0])
            for r in connection.execute(
                "SELECT object_id FROM hydration_requests WHERE object_type = 'contacts'"
            )
        }
    total = len(backlog.events)
    wanted = {"done": total} if complete else {"done": applied, "pending": total - applied}
    wanted = {k: v for k, v in wanted.items() if v}
    if statuses != wanted:
        raise BenchError(f"{label}: inbox statuses are {statuses}, expected {wanted}")
    expected = expected_state([e for e in backlog.events if int(e["eventId"]) in done_ids])
    mirrored = {("contacts", o): p for o, p in expected.properties.items()}
    problems: list[str] = []
    if objects != mirrored:
        wrong = sum(
            1 for k in mirrored.keys() | objects.keys() if objects.get(k) != mirrored.get(k)
        )
        problems.append(
            f"{wrong} of {len(mirrored)} contacts differ ({len(objects)} mirror rows present)"
        )
    if links != expected.associations:
        problems.append(
            f"associations: {len(links)} rows, expected {len(expected.associations)} "
            "(or their present/primary flags differ)"
        )
    if hydrations != expected.hydrations:
        problems.append(
            f"hydration requests: {len(hydrations)}, expected {len(expected.hydrations)}"
        )
    if claims is not None and claimed != claims:
        problems.append(f"applied changes: {claimed}, expected {claims}")
    if problems:
        raise BenchError(f"{label}: the mirror is wrong: " + "; ".join(problems))


def verify_bare(url: str, backlog: Backlog, *, label: str) -> None:
    """After the bare loop: every inbox row done, one plain row per object the events name."""
    with scratch.connect(url) as connection:
        statuses = dict(
            connection.execute("SELECT status, count(*) FROM inbox_events GROUP BY status")
        )
        row = connection.execute("SELECT count(*) FROM bench_bare_objects").fetchone()
    objects = {int(e.get("objectId") or e["fromObjectId"]) for e in backlog.events}
    if statuses != {"done": len(backlog.events)} or (int(row[0]) if row else 0) != len(objects):
        raise BenchError(f"{label}: inbox statuses {statuses}, {row} plain rows")


# --- the database ---------------------------------------------------------------------------------


def server_facts(url: str) -> dict[str, str]:
    """Settings that decide what the runs cost, as a new connection to `url` sees them."""
    names = ("server_version", "synchronous_commit", "fsync", "shared_buffers", "max_wal_size")
    facts: dict[str, str] = {}
    with scratch.connect(url) as connection:
        for name in names:
            row = connection.execute(f"SHOW {name}").fetchone()
            facts[name] = str(row[0]) if row else "?"
    return facts


def load(url: str, bodies: Sequence[bytes]) -> float:
    """Empty every table, store the backlog through the ingest SQL, vacuum; returns seconds."""
    started = time.perf_counter()
    with scratch.connect(url) as connection:
        # Every table the migrations made (inbox_events, crm_objects, crm_associations,
        # hydration_requests and whatever the mirror keeps beside them), so runs start alike.
        tables = [
            str(r[0])
            for r in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
        ]
        names = ", ".join(f'"{t}"' for t in tables)
        connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    stored = asyncio.run(_record(url, bodies))
    with scratch.connect(url) as connection:
        # An ingested backlog is soon vacuumed and analysed by autovacuum; every run starts so.
        connection.execute("VACUUM (ANALYZE) inbox_events")
        with suppress(psycopg.errors.InsufficientPrivilege):
            connection.execute("CHECKPOINT")  # a checkpoint inside a run would tax that run alone
        row = connection.execute("SELECT count(*) FROM inbox_events").fetchone()
    count = int(row[0]) if row else 0
    if count != stored:
        raise BenchError(f"loading stored {stored} events but the inbox holds {count}")
    return time.perf_counter() - started


async def _record(url: str, bodies: Sequence[bytes]) -> int:
    connection = await psycopg.AsyncConnection.connect(db.libpq_url(url), autocommit=True)
    stored = 0
    async with connection:
        for body in bodies:
            batch = inbox.parse_batch(body)
            result = await inbox.record_delivery(connection, batch, signature_version="v3")
            if result.stored != result.received:
                raise BenchError(f"{result.duplicates} events of a load batch were duplicates")
            stored += result.stored
    return stored


# --- the runs -------------------------------------------------------------------------------------


@dataclass
class Measured:
    """What one timed run did; CPU in seconds (None where it cannot be read)."""

    events: int
    seconds: float
    worker_cpu: float  # the worker process(es)
    postgres_cpu: float | None  # their server backends, when the server is on this machine
    machine_cpu: float | None  # every core of this machine, everything on it


_TICK = os.sysconf("SC_CLK_TCK")


def _backend_cpu(pid: int) -> float | None:
    """CPU seconds a local server process has used, or None when it is not on this machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_cpu() -> float | None:
    """CPU seconds every core has spent busy since boot (user, system, irq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / _TICK


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


class CpuMeter:
    """CPU used over a span by this process, one server backend and the whole machine."""

    def __init__(self, backend_pid: int) -> None:
        self._pid = backend_pid
        self._start = (time.process_time(), _backend_cpu(backend_pid), _machine_cpu())

    def read(self) -> tuple[float, float | None, float | None]:
        """(this process, the backend, the machine) since the meter was made."""
        own, backend, machine = self._start
        return (
            time.process_time() - own,
            _delta(backend, _backend_cpu(self._pid)),
            _delta(machine, _machine_cpu()),
        )


def _warm_engine(url: str) -> tuple[sa.Engine, int]:
    """An engine like the worker command's, with its one connection open; that backend's pid."""
    engine = db.create_engine(url, pool_size=1)
    with engine.connect() as connection:
        pid = int(connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
        sync = str(connection.execute(sa.text("SHOW synchronous_commit")).scalar_one())
    if sync != "on":
        engine.dispose()
        raise BenchError(f"synchronous_commit is {sync!r}, not on, for the worker's connection")
    return engine, pid


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the backlog this process holds out of the garbage collector's full passes.

    A worker process holds no backlog; without this, every gen-2 collection during an in-process
    run would walk millions of objects a real worker does not have.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def drain_in_process(url: str, batch_size: int, dedupe: bool) -> Measured:
    """One Worker.drain() in this process."""
    engine, pid = _warm_engine(url)
    try:
        worker = Worker(engine, batch_size=batch_size, dedupe_changes=dedupe)
        with _frozen_heap():
            meter = CpuMeter(pid)
            started = time.perf_counter()
            claimed = worker.drain()
            seconds = time.perf_counter() - started
        return Measured(claimed, seconds, *meter.read())
    finally:
        engine.dispose()


# (kind, events claimed, seconds, worker CPU, backend CPU) from a worker process.
Report = tuple[str, int, float, float, float | None]


def _worker_process(
    url: str, batch_size: int, dedupe: bool, start: ProcessEvent, reports: Queue[Report]
) -> None:
    """A worker process: connect, report ready, wait for the start, drain, report."""
    engine, pid = _warm_engine(url)
    try:
        worker = Worker(engine, batch_size=batch_size, dedupe_changes=dedupe)
        gc.collect()
        reports.put(("ready", 0, 0.0, 0.0, None))
        start.wait()
        meter = CpuMeter(pid)
        started = time.perf_counter()
        claimed = worker.drain()
        seconds = time.perf_counter() - started
        own, backend, _ = meter.read()
        reports.put(("done", claimed, seconds, own, backend))
    finally:
        engine.dispose()


def drain_in_processes(url: str, batch_size: int, processes: int, dedupe: bool) -> Measured:
    """`processes` worker processes released together; timed until the last one is done."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    reports: Queue[Report] = context.Queue()
    children = [
        context.Process(
            target=_worker_process,
            args=(url, batch_size, dedupe, start, reports),
            name=f"worker-{n}",
        )
        for n in range(processes)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            reports.get(timeout=120)  # each child's "ready": connected, imports done
        machine = _machine_cpu()
        started = time.perf_counter()
        start.set()
        done = [reports.get(timeout=MAX_RUN_SECONDS) for _ in children]
        seconds = time.perf_counter() - started
        machine_cpu = _delta(machine, _machine_cpu())
        for child in children:
            child.join(timeout=60)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join()
    if any(child.exitcode != 0 for child in children):
        raise BenchError(f"a worker process failed: exit codes {[c.exitcode for c in children]}")
    backends = [r[4] for r in done]
    return Measured(
        events=sum(r[1] for r in done),
        seconds=seconds,
        worker_cpu=sum(r[3] for r in done),
        postgres_cpu=None if None in backends else sum(b or 0.0 for b in backends),
        machine_cpu=machine_cpu,
    )


# The bare loop: what claiming, merging and marking done cost the database with nothing else.
_BARE_TABLE = """
    CREATE TABLE IF NOT EXISTS bench_bare_objects (
        object_id bigint PRIMARY KEY, properties jsonb NOT NULL DEFAULT '{}')
"""
_BARE_CLAIM = """
    SELECT id, occurred_at, payload FROM inbox_events
    WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
    ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""
_BARE_MERGE = """
    INSERT INTO bench_bare_objects AS b (object_id, properties)
    SELECT r.object_id, r.properties
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(object_id bigint, properties jsonb)
    ORDER BY r.object_id
    ON CONFLICT (object_id) DO UPDATE SET properties = b.properties || EXCLUDED.properties
"""
_BARE_DONE = """
    UPDATE inbox_events SET status = 'done', attempts = attempts + 1, processed_at = now()
    WHERE id = ANY(%(ids)s) AND occurred_at BETWEEN %(low)s AND %(high)s
"""


def bare_batch(connection: psycopg.Connection[Any], limit: int) -> int:
    """One bare batch in one transaction; returns the rows claimed."""
    with connection.transaction():
        rows = connection.execute(_BARE_CLAIM, {"limit": limit}).fetchall()
        if not rows:
            return 0
        merged: dict[int, dict[str, Any]] = {}
        for _, _, payload in rows:
            object_id = payload.get("objectId") or payload.get("fromObjectId")
            props = merged.setdefault(int(object_id), {})
            if "propertyName" in payload:
                props[payload["propertyName"]] = payload.get("propertyValue")
        documents = [{"object_id": o, "properties": p} for o, p in merged.items()]
        connection.execute(_BARE_MERGE, {"rows": json.dumps(documents)})
        stamps = [int(r[1]) for r in rows]
        connection.execute(
            _BARE_DONE, {"ids": [int(r[0]) for r in rows], "low": min(stamps), "high": max(stamps)}
        )
    return len(rows)


def drain_bare(url: str, batch_size: int) -> Measured:
    """The bare loop until nothing is due, on one plain psycopg connection."""
    with psycopg.connect(db.libpq_url(url), autocommit=True) as connection:
        connection.execute(_BARE_TABLE)
        connection.execute("TRUNCATE bench_bare_objects")
        row = connection.execute("SELECT pg_backend_pid()").fetchone()
        pid = int(row[0]) if row else 0
        with _frozen_heap():
            meter = CpuMeter(pid)
            started = time.perf_counter()
            total = 0
            while claimed := bare_batch(connection, batch_size):
                total += claimed
            seconds = time.perf_counter() - started
        return Measured(total, seconds, *meter.read())


def naive_apply_one(engine: sa.Engine) -> bool:
    """One event, one transaction: claim it, apply it with the mirror, mark it done."""
    with engine.begin() as connection:
        claimed = inbox.claim_due(connection, 1)
        if not claimed:
            return False
        row = claimed[0]
        mirror.apply_events(connection, [normalise(row.id, row.payload)])
        outcome = inbox.Outcome(row.id, row.occurred_at, "done")
        inbox.settle(connection, [outcome], max_attempts=10)
    return True


def drain_naively(url: str, *, max_events: int, max_seconds: float) -> Measured:
    """The naive loop on a prefix of the backlog: at most `max_events` or `max_seconds`."""
    engine, pid = _warm_engine(url)
    try:
        with _frozen_heap():
            meter = CpuMeter(pid)
            started = time.perf_counter()
            deadline = started + max_seconds
            applied = 0
            while applied < max_events and naive_apply_one(engine):
                applied += 1
                if applied % 100 == 0 and time.perf_counter() > deadline:
                    break
            seconds = time.perf_counter() - started
        return Measured(applied, seconds, *meter.read())
    finally:
        engine.dispose()


# --- results --------------------------------------------------------------------------------------


@dataclass
class Result:
    """One line of the table."""

    backlog: str
    run: str
    workers: int
    batch_size: int
    backlog_events: int
    events: int
    seconds: float
    worker_cpu: float
    postgres_cpu: float | None
    machine_cpu: float | None
    extrapolated: bool = False
    load_seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        """Applied events per wall-clock second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def other_cpu(self) -> float | None:
        """CPU the rest of the machine used: Postgres' own background processes, other load."""
        if self.machine_cpu is None or self.postgres_cpu is None:
            return None
        return max(0.0, self.machine_cpu - self.worker_cpu - self.postgres_cpu)

    @property
    def cpu_per_event(self) -> float | None:
        """Microseconds of worker plus backend CPU per event: steadier than wall time when the
        machine is shared."""
        if self.postgres_cpu is None or not self.events:
            return None
        return (self.worker_cpu + self.postgres_cpu) / self.events * 1e6

    @property
    def drain_seconds(self) -> float:
        """Time to drain the whole backlog (extrapolated for the naive prefix)."""
        if not self.extrapolated:
            return self.seconds
        rate = self.events_per_second
        return self.backlog_events / rate if rate > 0 else float("inf")

    def as_json(self) -> dict[str, Any]:
        """The result with its derived figures."""
        return {
            **asdict(self),
            "events_per_second": round(self.events_per_second, 1),
            "drain_seconds": round(self.drain_seconds, 3),
            "other_cpu": self.other_cpu,
            "cpu_us_per_event": self.cpu_per_event,
        }


@dataclass(frozen=True)
class Options:
    """What to run."""

    batch_sizes: tuple[int, ...]
    processes: int
    naive_events: int
    naive_seconds: float
    repeat: int
    dedupe: bool = False


def run_backlog(url: str, backlog: Backlog, options: Options) -> list[Result]:
    """Every run on one backlog, each on a freshly loaded inbox, each verified."""
    events = backlog.events
    bodies = [
        json.dumps(events[i : i + LOAD_BATCH], ensure_ascii=False).encode()
        for i in range(0, len(events), LOAD_BATCH)
    ]
    results: list[Result] = []

    def measure(run: str, workers: int, batch_size: int, go: Any, *, naive: bool = False) -> None:
        tries: list[tuple[Measured, float]] = []
        for attempt in range(options.repeat):
            _progress(f"{backlog.name}: loading {len(events):,} events for {run}")
            loaded = load(url, bodies)
            _progress(f"{backlog.name}: {run} (try {attempt + 1} of {options.repeat})")
            measured: Measured = go()
            if run == BARE_RUN:
                verify_bare(url, backlog, label=f"{backlog.name} / {run}")
                tries.append((measured, loaded))
                continue
            verify(
                url,
                backlog,
                applied=measured.events,
                complete=not naive,
                label=f"{backlog.name} / {run}",
                # The naive loop is the mirror alone; the workers claim every (distinct) change.
                claims=measured.events if options.dedupe and not naive else None,
            )
            tries.append((measured, loaded))
        # The median try by rate: noise on a shared machine goes both ways.
        tries.sort(key=lambda t: t[0].events / t[0].seconds)
        measured, loaded = tries[len(tries) // 2]
        results.append(
            Result(
                backlog=backlog.name,
                run=run,
                workers=workers,
                batch_size=batch_size,
                backlog_events=len(events),
                events=measured.events,
                seconds=measured.seconds,
                worker_cpu=measured.worker_cpu,
                postgres_cpu=measured.postgres_cpu,
                machine_cpu=measured.machine_cpu,
                extrapolated=naive and measured.events < len(events),
                load_seconds=loaded,
            )
        )

    for size in options.batch_sizes:
        measure(
            f"1 worker, batch {size}",
            1,
            size,
            lambda s=size: drain_in_process(url, s, options.dedupe),
        )
    headline = options.batch_sizes[0]
    measure(
        f"{options.processes} workers, batch {headline}",
        options.processes,
        headline,
        lambda: drain_in_processes(url, headline, options.processes, options.dedupe),
    )
    measure(BARE_RUN, 1, headline, lambda: drain_bare(url, headline))
    measure(
        "naive, 1 event per transaction",
        1,
        1,
        lambda: drain_naively(
            url, max_events=options.naive_events, max_seconds=options.naive_seconds
        ),
        naive=True,
    )
    return results


def _cpu(value: float | None, seconds: float) -> str:
    return "-" if value is None else f"{value / seconds * 100:4.0f}%"


def print_table(results: Sequence[Result]) -> None:
    """The runs, with the naive loop of the same backlog as the reference."""
    header = (
        f"{'backlog':<9} {'run':<32} {'events':>9} {'seconds':>8} {'events/s':>9} "
        f"{'drain s':>9} {'x naive':>8} {'worker CPU':>10} {'pg CPU':>7} {'other CPU':>9} "
        f"{'CPU us/ev':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        naive = _naive(results, r.backlog)
        ratio = r.events_per_second / naive.events_per_second if naive else 0.0
        drain = f"{r.drain_seconds:8.1f}{'*' if r.extrapolated else ' '}"
        per_event = "-" if r.cpu_per_event is None else f"{r.cpu_per_event:.0f}"
        print(
            f"{r.backlog:<9} {r.run:<32} {r.events:>9,} {r.seconds:>8.2f} "
            f"{r.events_per_second:>9,.0f} {drain:>9} {ratio:>7.1f}x "
            f"{_cpu(r.worker_cpu, r.seconds):>10} {_cpu(r.postgres_cpu, r.seconds):>7} "
            f"{_cpu(r.other_cpu, r.seconds):>9} {per_event:>9}"
        )
    print(
        "  * naive: measured on the first events of the backlog only, time to drain extrapolated"
        " at that rate.\n  CPU: % of one core over the run: the worker process(es), their"
        " Postgres backends (when local),\n  and the rest of the machine (Postgres' WAL writer"
        " and checkpointer, and any other load).\n  CPU us/ev: worker plus backend CPU per"
        " event, steadier than events/s on a shared machine."
    )


def _naive(results: Sequence[Result], backlog: str) -> Result | None:
    return next((r for r in results if r.backlog == backlog and r.batch_size == 1), None)


def goals(results: Sequence[Result], headline: int) -> list[dict[str, Any]]:
    """The goal lines per backlog: one worker at the default batch size, and vs the naive loop."""
    lines: list[dict[str, Any]] = []
    for name in dict.fromkeys(r.backlog for r in results):
        mine = [r for r in results if r.backlog == name and r.run != BARE_RUN]
        one = next(r for r in mine if r.workers == 1 and r.batch_size == headline)
        bare = next((r for r in results if r.backlog == name and r.run == BARE_RUN), None)
        bare_ratio = one.events_per_second / bare.events_per_second if bare else 0.0
        goal = GOAL_EVENTS_PER_SECOND[name]
        naive = _naive(results, name)
        ratio = one.events_per_second / naive.events_per_second if naive else 0.0
        best = max(
            (r for r in mine if r.workers == 1 and r.batch_size > 1),
            key=lambda r: r.events_per_second,
        )
        cpu_one = one.cpu_per_event
        cpu_naive = naive.cpu_per_event if naive else None
        busy = one.other_cpu / one.seconds if one.other_cpu is not None else None
        lines.append(
            {
                "backlog": name,
                "one_worker_events_per_second": round(one.events_per_second, 1),
                "one_worker_cpu_us_per_event": cpu_one,
                "one_worker_cpu_bound_events_per_second": 1e6 / cpu_one if cpu_one else None,
                "cpu_ratio_vs_naive": cpu_naive / cpu_one if cpu_one and cpu_naive else None,
                "other_load_cores": busy,
                "goal_events_per_second": goal,
                "events_per_second_pass": one.events_per_second >= goal,
                "bare_events_per_second": round(bare.events_per_second, 1) if bare else None,
                "bare_cpu_us_per_event": bare.cpu_per_event if bare else None,
                "ratio_vs_bare": round(bare_ratio, 3),
                "goal_ratio_vs_bare": GOAL_BARE_RATIO if name == "property" else None,
                "ratio_vs_bare_pass": bare_ratio >= GOAL_BARE_RATIO,
                "ratio_vs_naive": round(ratio, 2),
                "goal_ratio": GOAL_RATIO,
                "ratio_pass": ratio >= GOAL_RATIO,
                "best_batch_size": best.batch_size,
                "best_batch_events_per_second": round(best.events_per_second, 1),
            }
        )
    return lines


def print_goals(lines: Sequence[dict[str, Any]], headline: int) -> None:
    """PASS/MISS per goal (printed, never asserted)."""
    print()
    for g in lines:
        name = g["backlog"]
        rate, ratio = g["one_worker_events_per_second"], g["ratio_vs_naive"]
        print(
            f"{name:<9} 1 worker (batch {headline}) >= {g['goal_events_per_second']:,.0f} events/s:"
            f" {rate:,.0f}  {'PASS' if g['events_per_second_pass'] else 'MISS'}"
        )
        if g["bare_events_per_second"] is not None:
            verdict = "PASS" if g["ratio_vs_bare_pass"] else "MISS"
            goal = "" if g["goal_ratio_vs_bare"] is None else f" >= {GOAL_BARE_RATIO}"
            print(
                f"{name:<9} 1 worker (batch {headline}) / the bare loop"
                f" ({g['bare_events_per_second']:,.0f} events/s){goal}: {g['ratio_vs_bare']:.2f}"
                + (f"  {verdict}" if goal else "  (no goal for this backlog)")
            )
        print(
            f"{name:<9} 1 worker (batch {headline}) >= {g['goal_ratio']:.0f}x the naive loop:"
            f" {ratio:.1f}x  {'PASS' if g['ratio_pass'] else 'MISS'}"
        )
        print(
            f"{name:<9} best batch size for 1 worker: {g['best_batch_size']}"
            f" ({g['best_batch_events_per_second']:,.0f} events/s)"
        )
        if g["one_worker_cpu_us_per_event"] is not None and g["cpu_ratio_vs_naive"] is not None:
            print(
                f"{name:<9} 1 worker CPU: {g['one_worker_cpu_us_per_event']:.0f} us/event, worker"
                " and backend taking turns: about"
                f" {g['one_worker_cpu_bound_events_per_second']:,.0f} events/s on idle cores"
            )
            print(
                f"{name:<9} 1 worker uses {g['cpu_ratio_vs_naive']:.0f}x less CPU per event than"
                " the naive loop"
            )
        if g["other_load_cores"] is not None and g["other_load_cores"] > BUSY_CORES:
            print(
                f"{name:<9} note: other load used {g['other_load_cores']:.1f} cores during the"
                " headline run: its events/s is low; compare within one run, or --repeat 3"
            )


# --- main -----------------------------------------------------------------------------------------


def _sizes(value: str) -> tuple[int, ...]:
    sizes = tuple(int(v) for v in value.split(",") if v.strip())
    if not sizes or any(not 1 <= s <= 10_000 for s in sizes):
        raise argparse.ArgumentTypeError("expected batch sizes between 1 and 10000, e.g. 500,1000")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="bench/apply.py",
        description="How fast workers drain a backlog of HubSpot events into the mirror "
        "(see bench/README.md).",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to use (a scratch database is created on it and dropped); "
        "default $BENCH_DATABASE_URL, else $DATABASE_URL, else the local server on "
        "127.0.0.1:5432 if it answers, else an embedded server",
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per backlog")
    parser.add_argument("--contacts", type=int, default=20_000, help="contacts they are about")
    parser.add_argument(
        "--backlogs",
        default="property,mixed",
        help="which backlogs: property, mixed or both (default property,mixed)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=(HEADLINE_BATCH_SIZE, 1_000, 2_000),
        help="one-worker batch sizes; the first is the headline and the multi-process run's "
        "(default 500,1000,2000)",
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--naive-events", type=int, default=10_000, help="naive loop: at most this many events"
    )
    parser.add_argument(
        "--naive-seconds", type=float, default=20.0, help="naive loop: at most this long"
    )
    parser.add_argument("--repeat", type=int, default=1, help="tries per run; the median is kept")
    parser.add_argument("--seed", type=int, default=20261125, help="backlog random seed")
    parser.add_argument(
        "--dedupe",
        action="store_true",
        help="workers claim each applied change, as with HUBSPOT_EVENT_SOURCE=both",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.backlogs = tuple(dict.fromkeys(b.strip() for b in args.backlogs.split(",") if b.strip()))
    if not args.backlogs or not set(args.backlogs) <= {"property", "mixed"}:
        parser.error("--backlogs takes property, mixed or property,mixed")
    if args.events < 10 or args.contacts < 1 or args.contacts > args.events:
        parser.error("--events must be at least 10 and --contacts between 1 and --events")
    if args.processes < 1 or args.naive_events < 1 or args.naive_seconds <= 0 or args.repeat < 1:
        parser.error("--processes, --naive-events, --naive-seconds and --repeat must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build the backlogs, run everything on them, print the results."""
    args = parse_args(argv)
    options = Options(
        batch_sizes=args.batch_sizes,
        processes=args.processes,
        naive_events=args.naive_events,
        naive_seconds=args.naive_seconds,
        repeat=args.repeat,
        dedupe=args.dedupe,
    )
    configured = (
        args.database_url or os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    )
    started = datetime.now(UTC)
    code = code_version()
    makers = {"property": property_backlog, "mixed": mixed_backlog}
    backlogs = [
        makers[name](events=args.events, contacts=args.contacts, seed=args.seed)
        for name in args.backlogs
    ]
    results: list[Result] = []
    try:
        with ExitStack() as stack:
            server_url, source = stack.enter_context(scratch.postgres_server(configured, "apply"))
            url = stack.enter_context(scratch.scratch_database(server_url, SCRATCH_DATABASE))
            facts = server_facts(url)
            _print_header(started, source, facts, backlogs, code)
            print(f"dedupe_changes: {'on (--dedupe)' if args.dedupe else 'off'}")
            for backlog in backlogs:
                results += run_backlog(url, backlog, options)
    except BenchError as exc:
        print(f"bench/apply.py: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(results)
    lines = goals(results, options.batch_sizes[0])
    print_goals(lines, options.batch_sizes[0])
    if args.json is not None:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "postgres": {"source": source, **facts},
            "code": code,
            "backlogs": [
                {
                    "name": b.name,
                    "events": len(b.events),
                    "contacts": b.contacts,
                    "kinds": b.kinds(),
                }
                for b in backlogs
            ],
            "options": asdict(options),
            "runs": [r.as_json() for r in results],
            "goals": lines,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def code_version() -> str:
    """The commit measured, and whether service/ or migrations/ differ from it."""
    git = shutil.which("git")
    if git is None:
        return "unknown (no git)"
    try:
        head = subprocess.run(
            [git, "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            [git, "-C", str(ROOT), "status", "--porcelain", "--", "service", "migrations"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not changed:
        return head
    return f"{head} + uncommitted changes to {len(changed)} file(s) under service/, migrations/"


def _print_header(
    started: datetime,
    source: str,
    facts: dict[str, str],
    backlogs: Sequence[Backlog],
    code: str,
) -> None:
    print(
        f"bench/apply.py  {started:%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  "
        f"Python {platform.python_version()}  PostgreSQL {facts['server_version']} ({source})"
    )
    print(
        f"synchronous_commit={facts['synchronous_commit']}  fsync={facts['fsync']}  "
        f"shared_buffers={facts['shared_buffers']}  max_wal_size={facts['max_wal_size']}"
    )
    load1, load5, _ = os.getloadavg()
    print(f"code: {code}  load average before: {load1:.2f} (1 min), {load5:.2f} (5 min)")
    for b in backlogs:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(b.kinds().items()))
        print(f"backlog {b.name}: {len(b.events):,} events over {b.contacts:,} contacts ({kinds})")


if __name__ == "__main__":
    sys.exit(main())
