"""Hydration benchmark: API calls, 429s and time to converge for a burst of new contacts.

In one run, against the fake HubSpot (tests/fake_hubspot.py, a real HTTP server) with HubSpot's
lowest rate limit on (100 calls per rolling 10 s per private app), on a real PostgreSQL in a
scratch database:

1. for each `--workers` count (default 1 and 3): `--contacts` (default 10,000) new contacts are
   generated in the fake, one `contact.creation` event each is stored through the ingest path
   (`tests.support.store_events`, 100 events per delivery) and applied by `Worker.drain()`, so
   `hydration_requests` holds one row per contact; then that many hydrator processes, each with
   its own engine, `RateLimiter` and `HubSpotApi` (one shared budget in Postgres, as deployed),
   run `Hydrator(engine, api, {}).drain()`, released together and timed until the last is done;
2. the naive baseline: one `GET /crm/v3/objects/contacts/{id}` per creation event through the
   same `HubSpotApi.call` and rate limiter, each record applied with the same
   `hydration.complete`, on `--naive-events` events (default 300: 10,000 would take ~1,000 s),
   its time for all `--contacts` extrapolated from the measured rate-limit period.

Before each timed run the processes warm up (one call of the run's shape), then the fake's
windows and recorded calls, and our `rate_limits` and `hubspot_api_calls` rows, are reset, so
every run starts with a full budget and counts only its own calls. After each run the mirror is
checked: `hydration_requests` empty and every contact's properties (its generated email) in
`crm_objects`. It prints calls per 1,000 creation events, 429s, time to converge, the lower
bound the rate limit (or, when it does not bind, the fake's own service time) allows, where the
time went, and the goals (printed, never asserted). See bench/README.md.

    .venv/bin/python bench/hydrate.py [--contacts 10000] [--workers 1,3] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

# tests/ is not an installed package: the fake HubSpot and the ingest helper are imported from
# the checkout (this file's parent's parent), here and in every spawned process.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scratch
import sqlalchemy as sa

from service import db, fetches, mirror
from service.hubspot import hydration
from service.hubspot.client import HubSpotApi, default_budgets, ms_of
from service.hubspot.hydration import Hydrator
from service.hubspot.ratelimit import SAFETY_MARGIN_MS, RateLimiter
from service.hubspot.sdk import send
from service.rules.registry import Registry
from service.worker.apply import Worker
from tests.fake_hubspot import FakeHubSpot
from tests.support import store_events

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event as ProcessEvent

ROOT = Path(__file__).resolve().parent.parent
SCRATCH_DATABASE = "hubspot_webhooks_bench_hydrate"
PORTAL_ID = 62515
APP_ID = 1_234_567
TOKEN = "pat-na1-00000000-0000-4000-8000-0000bench062"
CREATION_SUBSCRIPTION = 3_300_001
DELIVERY_SIZE = 100  # events per delivery, HubSpot's maximum
BATCH_READ_PATH = "/crm/v3/objects/contacts/batch/read"
GOAL_CALL_RATIO = 90.0  # naive calls per event / ours
GOAL_CONVERGENCE_RATIO = 1.25  # measured time / what the rate limit (or service time) allows
MAX_RUN_SECONDS = 1_800.0
BUDGET = default_budgets()["api"]  # HubSpot's lowest tier: 100 calls per rolling 10 s


class BenchError(Exception):
    """The benchmark could not be set up, or a run left the mirror unconverged."""


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the database ---------------------------------------------------------------------------------


def server_facts(url: str) -> dict[str, str]:
    """Settings that decide what the runs cost, as a new connection to `url` sees them."""
    facts: dict[str, str] = {}
    with scratch.connect(url) as connection:
        for name in ("server_version", "synchronous_commit", "fsync"):
            row = connection.execute(f"SHOW {name}").fetchone()
            facts[name] = str(row[0]) if row else "?"
    return facts


# --- setting up a run -----------------------------------------------------------------------------


class EventIds:
    """eventIds never used before in this benchmark."""

    def __init__(self) -> None:
        self._next = 5_000_000_000

    def take(self) -> int:
        """The next unused eventId."""
        self._next += 1
        return self._next


def creation_events(ids: Sequence[int], event_ids: EventIds) -> list[dict[str, Any]]:
    """One contact.creation event per id, as HubSpot delivers them."""
    now_ms = int(time.time() * 1000)
    return [
        {
            "eventId": event_ids.take(),
            "subscriptionId": CREATION_SUBSCRIPTION,
            "portalId": PORTAL_ID,
            "appId": APP_ID,
            "occurredAt": now_ms,
            "subscriptionType": "contact.creation",
            "attemptNumber": 0,
            "objectId": object_id,
            "changeSource": "CRM_UI",
        }
        for object_id in ids
    ]


def new_contacts(url: str, fake: FakeHubSpot, count: int, event_ids: EventIds) -> list[int]:
    """`count` contacts created in the fake, their creation events stored and applied.

    Returns their ids; afterwards `hydration_requests` holds exactly one row per id.
    """
    ids = [int(i) for i in fake.generate(PORTAL_ID, "contacts", count)]
    events = creation_events(ids, event_ids)
    for start in range(0, len(events), DELIVERY_SIZE):
        store_events(url, events[start : start + DELIVERY_SIZE])
    engine = db.create_engine(url, pool_size=1)
    try:
        applied = Worker(engine, batch_size=500, handlers=Registry()).drain()
    finally:
        engine.dispose()
    with scratch.connect(url) as connection:
        # Fresh statistics, as autovacuum would soon give a table that just took 10,000 rows.
        connection.execute("VACUUM (ANALYZE) hydration_requests, crm_objects")
        row = connection.execute("SELECT count(*) FROM hydration_requests").fetchone()
    pending = int(row[0]) if row else 0
    if applied != count or pending != count:
        raise BenchError(
            f"{count} creation events gave {applied} applied and {pending} hydration requests"
        )
    return ids


def reset_limits(url: str, fake: FakeHubSpot, latency: float) -> None:
    """A full budget and no recorded calls, in the fake and in our own tables."""
    with scratch.connect(url) as connection:
        connection.execute("DELETE FROM rate_limits")
        connection.execute("DELETE FROM hubspot_api_calls")
    fake.reset()  # also turns latency off
    fake.latency(latency)


def check_converged(url: str, ids: Sequence[int]) -> tuple[int, int]:
    """(rows left in hydration_requests, contacts of `ids` holding their generated email)."""
    with scratch.connect(url) as connection:
        row = connection.execute(
            """
            SELECT (SELECT count(*) FROM hydration_requests),
                   (SELECT count(*) FROM crm_objects
                    WHERE portal_id = %s AND object_type = 'contacts' AND object_id = ANY(%s)
                      AND NOT archived
                      AND properties ->> 'email' = 'contact' || object_id || '@example.com')
            """,
            (PORTAL_ID, list(ids)),
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (-1, -1)


def counted_calls(url: str) -> dict[str, int]:
    """Our own call counter (hubspot_api_calls), endpoint:outcome -> calls."""
    with scratch.connect(url) as connection:
        rows = connection.execute(
            "SELECT endpoint, outcome, calls FROM hubspot_api_calls ORDER BY 1, 2"
        ).fetchall()
    return {f"{endpoint}:{outcome}": int(calls) for endpoint, outcome, calls in rows}


# --- instruments (inside the hydrator processes) -----------------------------------------------

# What a transaction was for, from its first statement.
_CATEGORIES = (
    ("WITH pick AS", "claim"),
    ("INTO rate_limits", "limiter"),
    ("UPDATE rate_limits SET max_calls", "observe"),
    ("UPDATE rate_limits SET blocked_until_ms", "limiter"),
    ("hubspot_api_calls", "count"),
    ("crm_objects", "apply"),
    ("SELECT now()", "apply"),
    ("SET LOCAL synchronous_commit", "apply"),  # the hydrator's apply transaction
)


def _category(statement: str) -> str:
    return next((label for needle, label in _CATEGORIES if needle in statement), "other")


class TransactionTimer:
    """Wall time of every pooled connection use (checkout to checkin), by its first statement.

    `with engine.begin()` checks a connection out, runs the statements, commits (fsync with
    synchronous_commit=on) and checks it back in, so this is the whole cost of a transaction
    as the caller waits for it, round trips and commit included (pool pre-ping excepted).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.seconds: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self._open: dict[int, list[Any]] = {}
        sa.event.listen(engine, "checkout", self._checkout)
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "checkin", self._checkin)

    def reset(self) -> None:
        """Forget what was timed so far."""
        self.seconds.clear()
        self.count.clear()

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self._open[id(dbapi_connection)] = [time.perf_counter(), None]

    def _statement(self, connection: Any, cursor: Any, statement: str, *rest: Any) -> None:
        entry = self._open.get(id(cursor.connection))
        if entry is not None and entry[1] is None:
            entry[1] = _category(statement)

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        entry = self._open.pop(id(dbapi_connection), None)
        if entry is None:
            return
        label = entry[1] or "other"
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - entry[0]
        self.count[label] = self.count.get(label, 0) + 1


class Sleeper:
    """time.sleep that adds up what it slept (the limiter's waits, the API's backoffs)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0

    def __call__(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        time.sleep(seconds)


def timed(call: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    """`call`, appending the wall time of each use to `into`."""

    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)

    return run


# --- the hydrator processes -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSpec:
    """What one process runs: `hydrator` (Hydrator.drain) or `naive` (one GET per id)."""

    role: str
    url: str
    fake_url: str
    ids: tuple[int, ...]  # hydrator: a sample for the warm-up call; naive: every id to fetch


@dataclass
class ChildReport:
    """What one process did and where its time went."""

    kind: str  # "ready", "done" or "failed"
    handled: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    sdk_seconds: list[float] = field(default_factory=list)
    sdk_starts: list[float] = field(default_factory=list)  # naive: since its start
    tx_seconds: dict[str, float] = field(default_factory=dict)
    tx_count: dict[str, int] = field(default_factory=dict)
    limiter_sleep_seconds: float = 0.0
    limiter_sleeps: int = 0
    backoff_seconds: float = 0.0
    error: str = ""


def _contact_snapshot(data: Any) -> mirror.Snapshot:
    updated = data.get("updatedAt")
    updated_ms = ms_of(updated) if isinstance(updated, str) and updated else 0
    return mirror.Snapshot(int(data["id"]), dict(data.get("properties") or {}), updated_ms)


def fetch_one(api: HubSpotApi, object_id: int, properties: list[str], starts: list[float]) -> Any:
    """GET one contact through the API client's call loop (rate limit, retries, counting)."""

    query = urlencode({"properties": ",".join(properties), "archived": "false"})
    path = f"{api.paths.record('contacts', object_id)}?{query}"

    def request(token: str) -> Any:
        starts.append(time.perf_counter())
        return send(api.base_url, "GET", path, token=token, session=api.session)

    return api.call(PORTAL_ID, "get_contact", request)


def naive_hydrate(
    engine: sa.Engine, api: HubSpotApi, ids: Sequence[int], starts: list[float]
) -> int:
    """The baseline: per creation event, GET its record and apply it, as `complete` does."""
    with engine.connect() as connection:
        properties = hydration.properties_for(connection, PORTAL_ID, "contacts", {})
    for object_id in ids:
        data = fetch_one(api, object_id, properties, starts)
        fetched_at_ms = int(time.time() * 1000)
        with engine.begin() as connection:
            claimed_at = connection.execute(sa.text("SELECT now()")).scalar_one()
            claimed = fetches.Claim(PORTAL_ID, "contacts", [object_id], claimed_at)
            hydration.complete(connection, claimed, [_contact_snapshot(data)], [], fetched_at_ms)
    return len(ids)


def _child(spec: ChildSpec, start: ProcessEvent, reports: Queue[ChildReport]) -> None:
    """A hydrator process: warm up, report ready, wait for the start, run, report."""
    engine = db.create_engine(spec.url, pool_size=4)  # as `worker` has it
    try:
        reports.put(_run_child(spec, engine, start, reports))
    except Exception as exc:  # re-raised: the parent must hear of it rather than time out
        reports.put(ChildReport("failed", error=f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        engine.dispose()


def _run_child(
    spec: ChildSpec, engine: sa.Engine, start: ProcessEvent, reports: Queue[ChildReport]
) -> ChildReport:
    timer = TransactionTimer(engine)
    waits, backoffs = Sleeper(), Sleeper()
    api = HubSpotApi(
        engine=engine,
        base_url=spec.fake_url,
        limiter=RateLimiter(engine, default_budgets(), sleep=waits),
        private_token=TOKEN,
        sleep=backoffs,
    )
    sdk_seconds: list[float] = []
    starts: list[float] = []
    # Time the HTTP round trip itself (the session's request), nothing of ours.
    api.session.request = timed(api.session.request, sdk_seconds)  # type: ignore[method-assign]
    # Warm up: imports, the SDK's models, the HTTP and database connections; nothing applied.
    with engine.connect() as connection:
        properties = hydration.properties_for(connection, PORTAL_ID, "contacts", {})
    if spec.role == "naive":
        fetch_one(api, spec.ids[0], properties, [])
    else:
        api.batch_read(PORTAL_ID, "contacts", list(spec.ids[:100]), properties)
    timer.reset()
    sdk_seconds.clear()
    waits.seconds, waits.count, backoffs.seconds = 0.0, 0, 0.0
    gc.collect()
    reports.put(ChildReport("ready"))
    start.wait()
    cpu = time.process_time()
    started = time.perf_counter()
    if spec.role == "naive":
        handled = naive_hydrate(engine, api, spec.ids, starts)
    else:
        handled = Hydrator(engine, api, {}).drain()
    seconds = time.perf_counter() - started
    return ChildReport(
        "done",
        handled=handled,
        seconds=seconds,
        cpu_seconds=time.process_time() - cpu,
        sdk_seconds=sdk_seconds,
        sdk_starts=[s - started for s in starts],
        tx_seconds=dict(timer.seconds),
        tx_count=dict(timer.count),
        limiter_sleep_seconds=waits.seconds,
        limiter_sleeps=waits.count,
        backoff_seconds=backoffs.seconds,
    )


@dataclass
class Measured:
    """One timed run: from the release of its processes to the last one's report."""

    seconds: float
    reports: list[ChildReport]
    fake_cpu: float  # this process: the fake HubSpot's server thread
    machine_cpu: float | None


def _machine_cpu() -> float | None:
    """CPU seconds every core has spent busy since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_processes(
    url: str, fake: FakeHubSpot, specs: Sequence[ChildSpec], latency: float
) -> Measured:
    """Start one process per spec, wait until all are warm, reset the limits, release, time."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    reports: Queue[ChildReport] = context.Queue()
    children = [
        context.Process(target=_child, args=(spec, start, reports), name=f"{spec.role}-{n}")
        for n, spec in enumerate(specs)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready = reports.get(timeout=120)
            if ready.kind != "ready":
                raise BenchError(f"a hydrator process failed while warming up: {ready.error}")
        reset_limits(url, fake, latency)
        gc.collect()
        machine = _machine_cpu()
        own = time.process_time()
        started = time.perf_counter()
        start.set()
        done: list[ChildReport] = []
        for _ in children:
            report = reports.get(timeout=MAX_RUN_SECONDS)
            if report.kind != "done":
                raise BenchError(f"a hydrator process failed: {report.error}")
            done.append(report)
        seconds = time.perf_counter() - started
        fake_cpu = time.process_time() - own
        after = _machine_cpu()
        for child in children:
            child.join(timeout=60)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join()
    return Measured(
        seconds=seconds,
        reports=done,
        fake_cpu=fake_cpu,
        machine_cpu=None if machine is None or after is None else after - machine,
    )


# --- results --------------------------------------------------------------------------------------

STAGES = ("claim", "limiter", "limiter wait", "SDK call", "count", "observe", "apply", "other")


@dataclass
class Result:
    """One line of the table, with what it is compared against."""

    run: str
    workers: int
    contacts: int  # creation events the run covers
    events: int  # creation events actually hydrated in the run (naive: the prefix)
    seconds: float  # measured time to converge (naive: for `events` only)
    api_calls: int  # every request the fake answered during the run
    batch_reads: int
    gets: int
    calls_429: int
    counted: dict[str, int]  # our hubspot_api_calls table
    sdk_median_ms: float
    sdk_p90_ms: float
    stages_ms: dict[str, float]  # per API call, summed over the processes
    fake_cpu: float
    worker_cpu: float
    machine_cpu: float | None
    extrapolated_seconds: float | None = None  # naive: the time for all `contacts`
    naive_period_seconds: float | None = None
    naive_burst_seconds: float | None = None

    @property
    def calls_per_1000(self) -> float:
        """API calls per 1,000 creation events."""
        return self.api_calls * 1000 / self.events if self.events else 0.0

    @property
    def converge_seconds(self) -> float:
        """Time until every contact of the run is in the mirror (naive: extrapolated)."""
        return self.extrapolated_seconds if self.extrapolated_seconds else self.seconds

    @property
    def calls_for_all(self) -> int:
        """API calls for all `contacts` (the naive run's count scaled up from its prefix)."""
        return -(-self.api_calls * self.contacts // self.events) if self.events else 0

    @property
    def rate_floor_seconds(self) -> float:
        """The least time HubSpot's window allows, with the last window's calls served.

        N calls under at most L per rolling W seconds: call j*L+1 starts at least j*W after
        the first, so the last r = N - (ceil(N/L) - 1) * L calls start (ceil(N/L) - 1) * W in,
        and `workers` lanes need ceil(r / workers) median calls more to finish them.
        """
        calls, limit = self.calls_for_all, BUDGET.max_calls
        windows = max(0, math.ceil(calls / limit) - 1)
        last = calls - windows * limit
        return (
            windows * BUDGET.window_ms / 1000
            + math.ceil(last / self.workers) * self.sdk_median_ms / 1000
        )

    @property
    def service_floor_seconds(self) -> float:
        """The least time the fake's answers allow: the calls back to back at the median
        SDK call time, spread over the workers (nothing of ours: no database, no apply)."""
        return math.ceil(self.calls_for_all / self.workers) * self.sdk_median_ms / 1000

    @property
    def bound_seconds(self) -> float:
        """What the rate limit itself allows: the larger of the two floors."""
        return max(self.rate_floor_seconds, self.service_floor_seconds)

    @property
    def bound_ratio(self) -> float:
        """Time to converge over the bound (3 decimals, so table and goal lines agree)."""
        return round(self.converge_seconds / self.bound_seconds, 3) if self.bound_seconds else 0.0

    @property
    def bound_kind(self) -> str:
        """Which floor binds."""
        return "rate limit" if self.rate_floor_seconds > self.service_floor_seconds else "service"

    def as_json(self) -> dict[str, Any]:
        """The result with its derived figures."""
        return {
            **asdict(self),
            "calls_per_1000_events": round(self.calls_per_1000, 2),
            "converge_seconds": round(self.converge_seconds, 3),
            "rate_floor_seconds": round(self.rate_floor_seconds, 3),
            "service_floor_seconds": round(self.service_floor_seconds, 3),
            "bound_seconds": round(self.bound_seconds, 3),
            "bound_kind": self.bound_kind,
            "bound_ratio": self.bound_ratio,
        }


def _stages(reports: Sequence[ChildReport], calls: int) -> dict[str, float]:
    """Milliseconds per API call in each stage, summed over the processes; `other` is the rest
    of the processes' wall time (our Python, the SDK's request models, GIL and CPU waits)."""
    tx: dict[str, float] = {}
    for r in reports:
        for label, seconds in r.tx_seconds.items():
            tx[label] = tx.get(label, 0.0) + seconds
    stages = {
        "claim": tx.pop("claim", 0.0),
        "limiter": tx.pop("limiter", 0.0),
        "limiter wait": sum(r.limiter_sleep_seconds + r.backoff_seconds for r in reports),
        "SDK call": sum(sum(r.sdk_seconds) for r in reports),
        "count": tx.pop("count", 0.0),
        "observe": tx.pop("observe", 0.0),
        "apply": tx.pop("apply", 0.0),
    }
    wall = sum(r.seconds for r in reports)
    stages["other"] = max(0.0, wall - sum(stages.values()))
    per_call = max(calls, 1)
    return {name: seconds * 1000 / per_call for name, seconds in stages.items()}


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _result(
    run: str,
    measured: Measured,
    fake: FakeHubSpot,
    url: str,
    *,
    workers: int,
    contacts: int,
    events: int,
) -> Result:
    sdk = [s for r in measured.reports for s in r.sdk_seconds]
    calls = fake.count()
    return Result(
        run=run,
        workers=workers,
        contacts=contacts,
        events=events,
        seconds=measured.seconds,
        api_calls=calls,
        batch_reads=fake.count(BATCH_READ_PATH, method="POST"),
        gets=fake.count("/crm/v3/objects/contacts/", method="GET"),
        calls_429=fake.count(status=429),
        counted=counted_calls(url),
        sdk_median_ms=statistics.median(sdk) * 1000 if sdk else 0.0,
        sdk_p90_ms=_percentile(sdk, 0.9) * 1000,
        stages_ms=_stages(measured.reports, calls),
        fake_cpu=measured.fake_cpu,
        worker_cpu=sum(r.cpu_seconds for r in measured.reports),
        machine_cpu=measured.machine_cpu,
    )


def hydrate_run(
    url: str,
    fake: FakeHubSpot,
    *,
    contacts: int,
    workers: int,
    event_ids: EventIds,
    latency: float,
) -> Result:
    """`contacts` new contacts hydrated by `workers` processes; verified converged."""
    run = f"{workers} hydrator{'s' if workers > 1 else ''}"
    _progress(f"{run}: {contacts:,} new contacts, storing and applying their creation events")
    ids = new_contacts(url, fake, contacts, event_ids)
    _progress(f"{run}: hydrating {contacts:,} requests")
    spec = ChildSpec("hydrator", url, fake.url, tuple(ids[:100]))
    measured = run_processes(url, fake, [spec] * workers, latency)
    left, hydrated = check_converged(url, ids)
    if left or hydrated != contacts:
        raise BenchError(
            f"{run}: not converged: {left} hydration requests left, {hydrated} of {contacts}"
            " contacts hold their properties"
        )
    return _result(run, measured, fake, url, workers=workers, contacts=contacts, events=contacts)


def naive_run(
    url: str,
    fake: FakeHubSpot,
    *,
    contacts: int,
    events: int,
    event_ids: EventIds,
    latency: float,
) -> Result:
    """The naive loop on `events` creation events; its time for `contacts` extrapolated."""
    run = "naive: 1 GET per event"
    _progress(f"{run}: {events:,} new contacts, storing and applying their creation events")
    ids = new_contacts(url, fake, events, event_ids)
    _progress(f"{run}: fetching {events:,} contacts one by one (about {events // 10} s)")
    spec = ChildSpec("naive", url, fake.url, tuple(ids))
    measured = run_processes(url, fake, [spec], latency)
    left, hydrated = check_converged(url, ids)
    if left or hydrated != events:
        raise BenchError(f"{run}: {left} requests left, {hydrated} of {events} contacts hydrated")
    result = _result(run, measured, fake, url, workers=1, contacts=contacts, events=events)
    starts = sorted(measured.reports[0].sdk_starts)
    per_window = BUDGET.max_calls
    if len(starts) > per_window:
        # The limiter lets L calls start per window: the period is the time from call 1 to
        # call k*L+1, over k. The first L calls (the burst) take their own service time.
        k = (len(starts) - 1) // per_window
        period = (starts[k * per_window] - starts[0]) / k
        last_call = statistics.median(measured.reports[0].sdk_seconds)
        burst = starts[per_window - 1] - starts[0] + last_call
    else:
        period = BUDGET.window_ms / 1000 + SAFETY_MARGIN_MS / 1000
        burst = measured.seconds * per_window / max(len(starts), 1)
    # Calls for all the contacts at the measured calls per event, in windows of L.
    windows = math.ceil(result.calls_for_all / per_window) - 1
    result.naive_period_seconds = period
    result.naive_burst_seconds = burst
    result.extrapolated_seconds = windows * period + burst
    return result


# --- printing -------------------------------------------------------------------------------------


def _pct(value: float | None, seconds: float) -> str:
    return "-" if value is None or seconds <= 0 else f"{value / seconds * 100:.0f}%"


def print_table(results: Sequence[Result]) -> None:
    """The runs: calls, 429s, time to converge and its bound."""
    header = (
        f"{'run':<24} {'events':>7} {'API calls':>9} {'/1,000 ev':>9} {'429s':>5} "
        f"{'converge s':>11} {'bound s':>8} {'binds':>10} {'x bound':>8} {'SDK p50 ms':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        converge = (
            f"{r.converge_seconds:10.1f}*"
            if r.extrapolated_seconds
            else f"{round(r.seconds, 3):10.2f} "
        )
        print(
            f"{r.run:<24} {r.events:>7,} {r.api_calls:>9,} {r.calls_per_1000:>9.1f} "
            f"{r.calls_429:>5} {converge:>11} {r.bound_seconds:>8.2f} {r.bound_kind:>10} "
            f"{r.bound_ratio:>7.2f}x {r.sdk_median_ms:>10.1f}"
        )
    naive = next((r for r in results if r.extrapolated_seconds), None)
    if naive is not None and naive.naive_period_seconds and naive.naive_burst_seconds:
        windows = math.ceil(naive.calls_for_all / BUDGET.max_calls) - 1
        print(
            f"  * naive: measured on {naive.events:,} events ({naive.seconds:.1f} s, every call"
            f" a GET: {naive.gets:,}), extrapolated to {naive.contacts:,}:\n"
            f"    {windows} more periods of {BUDGET.max_calls} calls at the measured"
            f" {naive.naive_period_seconds:.2f} s each\n"
            f"    (the limiter lets {BUDGET.max_calls} start per"
            f" {(BUDGET.window_ms + SAFETY_MARGIN_MS) / 1000:g} s: HubSpot's"
            f" {BUDGET.window_ms / 1000:g} s + its {SAFETY_MARGIN_MS} ms margin; longer when"
            " the calls are slower)\n"
            f"    + the last {BUDGET.max_calls} calls as the first {BUDGET.max_calls} took"
            f" ({naive.naive_burst_seconds:.2f} s)."
        )
    print(
        "  bound: the least time any client could converge in with the run's N API calls on"
        " its workers (k lanes),\n"
        f"  HubSpot's limit (L = {BUDGET.max_calls} per rolling W = {BUDGET.window_ms / 1000:g} s)"
        " and the run's median SDK call s (HTTP round trip + the SDK's\n"
        "  (de)serialisation; none of our database work): the larger of\n"
        "    rate limit: (ceil(N/L) - 1) x W + ceil(r/k) x s, r = the calls of the last window,"
        " and\n"
        "    service:    ceil(N/k) x s.\n"
        "  `binds` says which is larger; `x bound` = converge s / bound s."
    )


def print_breakdown(results: Sequence[Result]) -> None:
    """Where the time went, per API call, summed over the processes of a run."""
    print()
    print("where the time went, ms per API call (summed over a run's processes):")
    header = f"{'run':<24} " + " ".join(f"{s:>12}" for s in STAGES) + f" {'total':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        cells = " ".join(f"{r.stages_ms.get(s, 0.0):>12.2f}" for s in STAGES)
        print(f"{r.run:<24} {cells} {sum(r.stages_ms.values()):>8.2f}")
    print(
        "  claim: lease up to 100 requests with their property list (1 transaction); limiter:"
        " reserve a slot\n  (1 transaction, a row lock shared by every process); limiter wait:"
        " sleeping for a slot or a backoff;\n  SDK call: the HTTP round trip to the fake;"
        " count: a hubspot_api_calls upsert of its own (none: the\n  hydrator counts in its apply"
        " transaction); observe: adopt the rate-limit headers (1 transaction, only when\n  they"
        " change); apply: snapshots into the mirror, delete the requests, count the call (1"
        " transaction);\n  other: the rest of the wall time (our Python, the SDK's models,"
        " waiting for a CPU). The hydrator is\n  pipelined: claim and apply run in background"
        " threads during the reads, so the stages add up to more\n  than the wall time and"
        " `other` is then 0."
    )
    print()
    for r in results:
        print(
            f"{r.run:<24} CPU over the run: hydrator process(es) {_pct(r.worker_cpu, r.seconds)}"
            f" of a core, fake HubSpot {_pct(r.fake_cpu, r.seconds)}, whole machine"
            f" {_pct(r.machine_cpu, r.seconds)}; SDK call p90 {r.sdk_p90_ms:.1f} ms;"
            f" our counter: {_counted(r.counted)}"
        )


def _counted(counted: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counted.items()) or "nothing"


def goals(results: Sequence[Result]) -> list[dict[str, Any]]:
    """The goal lines: calls vs the naive baseline, and convergence vs the bound."""
    lines: list[dict[str, Any]] = []
    naive = next((r for r in results if r.extrapolated_seconds), None)
    for r in results:
        if r is naive:
            continue
        line: dict[str, Any] = {
            "run": r.run,
            "calls_per_1000_events": round(r.calls_per_1000, 2),
            "converge_seconds": round(r.seconds, 3),
            "bound_seconds": round(r.bound_seconds, 3),
            "bound_kind": r.bound_kind,
            "converge_ratio": r.bound_ratio,
            "goal_converge_ratio": GOAL_CONVERGENCE_RATIO,
            "converge_pass": r.seconds <= GOAL_CONVERGENCE_RATIO * r.bound_seconds,
            "calls_429": r.calls_429,
        }
        if naive is not None:
            ratio = naive.calls_per_1000 / r.calls_per_1000 if r.calls_per_1000 else 0.0
            line |= {
                "naive_calls_per_1000_events": round(naive.calls_per_1000, 2),
                "fewer_calls_ratio": round(ratio, 1),
                "goal_fewer_calls_ratio": GOAL_CALL_RATIO,
                "fewer_calls_pass": ratio >= GOAL_CALL_RATIO,
                "naive_converge_seconds_extrapolated": round(naive.converge_seconds, 1),
                "faster_than_naive": round(naive.converge_seconds / r.seconds, 1),
            }
        lines.append(line)
    return lines


def print_goals(lines: Sequence[dict[str, Any]]) -> None:
    """PASS/MISS per goal (printed, never asserted)."""
    print()
    for g in lines:
        run = g["run"]
        if "fewer_calls_ratio" in g:
            print(
                f"{run:<12} >= {g['goal_fewer_calls_ratio']:.0f}x fewer calls than naive:"
                f" {g['calls_per_1000_events']:.1f} vs {g['naive_calls_per_1000_events']:,.1f}"
                f" per 1,000 creation events = {g['fewer_calls_ratio']:.1f}x"
                f"  {'PASS' if g['fewer_calls_pass'] else 'MISS'}"
            )
        print(
            f"{run:<12} converges within {(g['goal_converge_ratio'] - 1) * 100:.0f}% of the bound"
            f" ({g['bound_kind']}): {g['converge_seconds']:.2f} s vs {g['bound_seconds']:.2f} s"
            f" = {g['converge_ratio']:.2f}x  {'PASS' if g['converge_pass'] else 'MISS'}"
        )
        if "faster_than_naive" in g:
            print(
                f"{run:<12} vs naive's {g['naive_converge_seconds_extrapolated']:,.0f} s"
                f" (extrapolated): {g['faster_than_naive']:,.0f}x sooner; 429s: {g['calls_429']}"
            )


# --- main -----------------------------------------------------------------------------------------


def _workers(value: str) -> tuple[int, ...]:
    counts = tuple(int(v) for v in value.split(",") if v.strip())
    if not counts or any(not 1 <= c <= 16 for c in counts):
        raise argparse.ArgumentTypeError("expected worker counts between 1 and 16, e.g. 1,3")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="bench/hydrate.py",
        description="API calls and time to converge when hydrating new contacts under HubSpot's"
        " rate limit, against the fake HubSpot (see bench/README.md).",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to use (a scratch database is created on it and dropped); "
        "default $BENCH_DATABASE_URL, else the local server on 127.0.0.1:5432 if it answers, "
        "else an embedded server",
    )
    parser.add_argument("--contacts", type=int, default=10_000, help="new contacts per run")
    parser.add_argument(
        "--workers", type=_workers, default=(1, 3), help="hydrator processes per run (1,3)"
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        default=300,
        help="creation events the naive loop fetches (100 per 10 s); its time is extrapolated",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds the fake waits before every answer, to stand in for HubSpot's round trip"
        " (default 0: loopback only)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.contacts < 100 or args.naive_events < 1 or args.naive_events > args.contacts:
        parser.error("--contacts must be at least 100 and --naive-events between 1 and it")
    if not 0 <= args.latency <= 5:
        parser.error("--latency must be between 0 and 5 seconds")
    return args


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


def main(argv: Sequence[str] | None = None) -> int:
    """Set up the database and the fake, run everything, print the results."""
    args = parse_args(argv)
    configured = args.database_url or os.environ.get("BENCH_DATABASE_URL")
    started = datetime.now(UTC)
    event_ids = EventIds()
    results: list[Result] = []
    try:
        with ExitStack() as stack:
            server_url, source = stack.enter_context(scratch.postgres_server(configured, "hydrate"))
            url = stack.enter_context(scratch.scratch_database(server_url, SCRATCH_DATABASE))
            facts = server_facts(url)
            fake = stack.enter_context(
                FakeHubSpot(rate_limit=BUDGET.max_calls, rate_interval=BUDGET.window_ms / 1000)
            )
            fake.add_token(TOKEN, PORTAL_ID)
            print(
                f"bench/hydrate.py  {started:%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  "
                f"Python {platform.python_version()}  PostgreSQL {facts['server_version']}"
                f" ({source}), synchronous_commit={facts['synchronous_commit']}"
            )
            load1, _, _ = os.getloadavg()
            print(
                f"code: {code_version()}  load average before: {load1:.2f}  fake HubSpot limit:"
                f" {BUDGET.max_calls} calls / {BUDGET.window_ms / 1000:g} s per private app;"
                f" {args.contacts:,} new contacts per run; added latency per request:"
                f" {args.latency * 1000:g} ms"
            )
            for workers in args.workers:
                results.append(
                    hydrate_run(
                        url,
                        fake,
                        contacts=args.contacts,
                        workers=workers,
                        event_ids=event_ids,
                        latency=args.latency,
                    )
                )
            results.append(
                naive_run(
                    url,
                    fake,
                    contacts=args.contacts,
                    events=args.naive_events,
                    event_ids=event_ids,
                    latency=args.latency,
                )
            )
    except BenchError as exc:
        print(f"bench/hydrate.py: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(results)
    print_breakdown(results)
    lines = goals(results)
    print_goals(lines)
    if args.json is not None:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "postgres": {"source": source, **facts},
            "code": code_version(),
            "rate_limit": {"max_calls": BUDGET.max_calls, "window_ms": BUDGET.window_ms},
            "contacts": args.contacts,
            "naive_events": args.naive_events,
            "latency_seconds": args.latency,
            "runs": [r.as_json() for r in results],
            "goals": lines,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
