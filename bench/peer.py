"""The peer: this service side by side with the webhook handler people usually write.

One run, two stacks, each on its own fake HubSpot (tests/fake_hubspot.py, a real HTTP server
with HubSpot's lowest limit: 100 calls per rolling 10 s) and its own scratch database:

- this service: the real `hubspot-webhooks serve` and one real `worker` (hydration on, a
  private app token to its fake);
- the peer: bench/peer_handler.py under uvicorn, written as an integrator would (Starlette,
  hubspot-api-client, psycopg): verify the v3 signature, GET each event's contact, upsert it,
  then answer 200 (500 on any failure).

Both fakes hold the same `--contacts` contacts. The same burst goes to both at once, as HubSpot
sends it: one `contact.creation` event per contact, 100 events per delivery, `--concurrency`
deliveries in flight, each signed as it leaves; an answer later than HubSpot's 5 s counts as
failed. A failed delivery is retried on `--retry-delays` (seconds after the failure, one entry
per retry, each jittered by +-`--jitter`): HubSpot documents "up to 10 retries over 24 hours"
without a schedule; its older docs gave 2, 4, 8... minutes, hence the default of one retry
after 120 s. Retries due after `--max-seconds` are not sent.

Every second each database is compared with its fake (a contact is correct when its email,
firstname and lastname equal the fake's). Printed: deliveries acknowledged (200 within 5 s),
ack p50/max, records correct after `--window` seconds and at the end, API calls and 429s (the
fakes' own counts, SDK retries included). Issue 13 sets no numeric goal for the peer, so no
PASS/MISS line: the comparison is printed as measured. See bench/README.md.

    .venv/bin/python bench/peer.py [--contacts 3000] [--retry-delays 120] [--json out.json]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import peer_handler
from scratch import connect, postgres_server, progress, scratch_database
from sqlalchemy.engine import make_url

from service import db
from service.devtools.delivery import HUBSPOT_RESPONSE_SECONDS, encode_batch, signed_headers
from service.settings import WEBHOOK_PATH
from tests.factories import CLIENT_SECRET
from tests.fake_hubspot import FakeHubSpot
from tests.servers import serve_env, serve_process
from tests.support import free_port

SERVICE_DATABASE = "hubspot_webhooks_bench_peer_service"
PEER_DATABASE = "hubspot_webhooks_bench_peer_handler"
BENCH_DIR = Path(__file__).resolve().parent
PORTAL_ID = 62515
APP_ID = 1_234_567
SUBSCRIPTION_ID = 3_300_001
TOKEN = "pat-na1-00000000-0000-4000-8000-00000bench13"  # the fakes' test token
COMPARED = ("email", "firstname", "lastname")
SIDES = ("service", "peer")

_SERVICE_ROWS = """
    SELECT object_id, properties->>'email', properties->>'firstname', properties->>'lastname'
    FROM crm_objects WHERE portal_id = %s AND object_type = 'contacts'
"""
_PEER_ROWS = "SELECT hubspot_id, email, firstname, lastname FROM contacts"


@dataclass
class Attempt:
    """One POST of one delivery and HubSpot's view of it."""

    delivery: int
    attempt: int  # 0 first, 1 first retry...
    sent_s: float  # since the burst started
    seconds: float
    status: int | None  # None: no answer within 5 s, or the connection failed
    error: str = ""

    @property
    def acknowledged(self) -> bool:
        """Answered 200 within HubSpot's 5 s."""
        return self.status == 200 and self.seconds <= HUBSPOT_RESPONSE_SECONDS


@dataclass
class Side:
    """One stack's measurements."""

    name: str
    url: str
    fake: FakeHubSpot
    database_url: str
    rows_sql: str
    rows_params: tuple[int, ...]
    attempts: list[Attempt] = field(default_factory=list)
    correct: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, ok, wrong, n
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    unsent_retries: int = 0


def creation_events(ids: list[str], first_event_id: int, attempt: int) -> list[dict[str, Any]]:
    """One contact.creation event per id, as HubSpot delivers them (attemptNumber per retry)."""
    now_ms = int(time.time() * 1000)
    return [
        {
            "eventId": first_event_id + n,
            "subscriptionId": SUBSCRIPTION_ID,
            "portalId": PORTAL_ID,
            "appId": APP_ID,
            "occurredAt": now_ms,
            "subscriptionType": "contact.creation",
            "attemptNumber": attempt,
            "objectId": int(object_id),
            "changeSource": "CRM_UI",
        }
        for n, object_id in enumerate(ids)
    ]


class Deliverer:
    """HubSpot's side for one target: `concurrency` POSTs in flight, 5 s timeout, retries."""

    def __init__(
        self, side: Side, batches: list[list[str]], args: argparse.Namespace, started: float
    ) -> None:
        self.side, self.batches, self.started = side, batches, started
        self.delays, self.jitter, self.end = args.retry_delays, args.jitter, args.max_seconds
        self.rng = random.Random(args.seed)
        self.due: list[tuple[float, int, int]] = [(0.0, n, 0) for n in range(len(batches))]
        self.in_flight = 0
        self.cond = threading.Condition()
        self.threads = [
            threading.Thread(target=self._run, name=f"{side.name}-hubspot-{n}", daemon=True)
            for n in range(args.concurrency)
        ]

    def start(self) -> None:
        """Start delivering."""
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        """Wait until every due delivery and retry has been answered or given up."""
        for thread in self.threads:
            thread.join()

    def _take(self) -> tuple[int, int] | None:
        with self.cond:
            while True:
                if not self.due and not self.in_flight:
                    self.cond.notify_all()
                    return None
                now = time.monotonic() - self.started
                if self.due and self.due[0][0] > self.end:
                    self.side.unsent_retries += len(self.due)
                    self.due.clear()
                    continue
                if self.due and self.due[0][0] <= now:
                    _, delivery, attempt = heapq.heappop(self.due)
                    self.in_flight += 1
                    return delivery, attempt
                self.cond.wait(self.due[0][0] - now if self.due else None)

    def _run(self) -> None:
        with httpx.Client(timeout=HUBSPOT_RESPONSE_SECONDS) as http:
            while (taken := self._take()) is not None:
                delivery, attempt = taken
                result = self._post(http, delivery, attempt)
                with self.cond:
                    self.side.attempts.append(result)
                    if not result.acknowledged and attempt < len(self.delays):
                        scale = 1 + self.rng.uniform(-self.jitter, self.jitter)
                        due = result.sent_s + result.seconds + self.delays[attempt] * scale
                        heapq.heappush(self.due, (due, delivery, attempt + 1))
                    self.in_flight -= 1
                    self.cond.notify_all()

    def _post(self, http: httpx.Client, delivery: int, attempt: int) -> Attempt:
        ids = self.batches[delivery]
        body = encode_batch(creation_events(ids, 10_000_000 + delivery * 1000, attempt))
        headers = signed_headers(
            secret=CLIENT_SECRET, url=self.side.url, body=body, timestamp_ms=int(time.time() * 1000)
        )
        sent = time.monotonic()
        try:
            answer = http.post(self.side.url, content=body, headers=headers)
            status, error = answer.status_code, ""
        except httpx.HTTPError as exc:
            status, error = None, type(exc).__name__
        took = time.monotonic() - sent
        return Attempt(delivery, attempt, sent - self.started, took, status, error)


def expected_records(fake: FakeHubSpot, ids: list[str]) -> dict[int, tuple[str | None, ...]]:
    """Each contact's compared properties as the fake holds them."""
    found: dict[int, tuple[str | None, ...]] = {}
    for object_id in ids:
        record = fake.get(PORTAL_ID, "contacts", object_id)
        assert record is not None
        found[int(object_id)] = tuple(record["properties"].get(name) for name in COMPARED)
    return found


def check(side: Side, expected: dict[int, tuple[str | None, ...]]) -> tuple[int, int, int]:
    """(correct, wrong, rows) of the side's database against `expected`."""
    with connect(side.database_url) as connection:
        rows = connection.execute(side.rows_sql, side.rows_params).fetchall()
    ok = sum(1 for r in rows if expected.get(int(r[0])) == tuple(r[1:]))
    wrong = sum(1 for r in rows if int(r[0]) in expected) - ok
    return ok, wrong, len(rows)


def snapshot(side: Side, expected: dict[int, tuple[str | None, ...]], at: float) -> dict[str, Any]:
    """Records, deliveries, API calls and 429s as they stand `at` seconds into the burst."""
    ok, wrong, rows = check(side, expected)
    answered = [a for a in side.attempts if a.sent_s + a.seconds <= at]
    acked = {a.delivery for a in answered if a.acknowledged}
    return {
        "at_s": round(at, 1),
        "records_correct": ok,
        "records_wrong": wrong,
        "records_missing": len(expected) - ok - wrong,
        "rows": rows,
        "deliveries_acknowledged": len(acked),
        "attempts_answered": len(answered),
        "api_calls": side.fake.count(),
        "api_429s": side.fake.count(status=429),
    }


@contextmanager
def plain_database(server_url: str, name: str) -> Iterator[str]:
    """An empty database with the peer's own table (its integrator's migration); dropped after."""
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with connect(server_url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    try:
        with connect(url) as connection:
            connection.execute(peer_handler.SCHEMA)
        yield url
    finally:
        with connect(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` with exactly `env` (plus PATH, HOME, TMPDIR), output to `log`; SIGTERM at the end."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    with log.open("wb") as out:
        child = subprocess.Popen(
            argv, env={**base, **env}, cwd=BENCH_DIR.parent, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield child
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)


def wait_for(
    ready: Callable[[], bool], what: str, child: subprocess.Popen[bytes], log: Path
) -> None:
    """Poll `ready()` until true; exit with `child`'s log if it dies or 60 s pass."""
    deadline = time.monotonic() + 60
    while not ready():
        if child.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


def worker_beats(url: str) -> bool:
    """Whether a worker has written its heartbeat (it is up and polling)."""
    with connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM worker_heartbeats").fetchone()
    return bool(row and row[0])


def answers(url: str) -> bool:
    """Whether anything answers HTTP at `url`."""
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def start_service(stack: ExitStack, url: str, fake: FakeHubSpot, tmp: Path) -> str:
    """`serve` and one `worker` on the service's database; the webhook URL."""
    serving = stack.enter_context(serve_process(serve_env(url, tmp / "data"), tmp / "serve.log"))
    env = {
        "DATABASE_URL": url,
        "DATA_DIR": str(tmp / "data"),
        "LOG_LEVEL": "WARNING",
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "HUBSPOT_API_BASE_URL": fake.url,
    }
    log = tmp / "worker.log"
    worker = stack.enter_context(process([sys.executable, "-m", "service", "worker"], env, log))
    wait_for(lambda: worker_beats(url), "the worker", worker, log)
    return serving.url + WEBHOOK_PATH


def start_peer(stack: ExitStack, url: str, fake: FakeHubSpot, tmp: Path, commit: str) -> str:
    """The peer handler under uvicorn (one process, as `uvicorn app:app` runs); its URL."""
    port = free_port()
    env = {
        "DATABASE_URL": db.libpq_url(url),
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "HUBSPOT_HOST": fake.url,
        "PEER_COMMIT": commit,
    }
    argv = [sys.executable, "-m", "uvicorn", "peer_handler:app", "--app-dir", str(BENCH_DIR)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log = tmp / "peer.log"
    child = stack.enter_context(process([*argv, "--no-access-log"], env, log))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(base), "the peer", child, log)
    return base + WEBHOOK_PATH


def burst(args: argparse.Namespace, server_url: str, tmp: Path) -> dict[str, Any]:
    """Set both stacks up, send the burst to both at once, watch both databases, measure."""
    with ExitStack() as stack:
        service_db = stack.enter_context(scratch_database(server_url, SERVICE_DATABASE))
        peer_db = stack.enter_context(plain_database(server_url, PEER_DATABASE))
        fakes = {
            name: stack.enter_context(FakeHubSpot(rate_limit=100, rate_interval=10.0))
            for name in SIDES
        }
        ids: dict[str, list[str]] = {}
        for name, fake in fakes.items():
            fake.add_token(TOKEN, PORTAL_ID)
            ids[name] = fake.generate(PORTAL_ID, "contacts", args.contacts)
        expected = expected_records(fakes["service"], ids["service"])
        if (
            ids["peer"] != ids["service"]
            or expected_records(fakes["peer"], ids["peer"]) != expected
        ):
            raise SystemExit("the two fakes do not hold the same contacts")
        progress(f"{args.contacts:,} contacts in each fake; starting serve + worker, and the peer")
        sides = {
            "service": Side(
                "service",
                start_service(stack, service_db, fakes["service"], tmp),
                fakes["service"],
                service_db,
                _SERVICE_ROWS,
                (PORTAL_ID,),
            ),
            "peer": Side(
                "peer",
                start_peer(stack, peer_db, fakes["peer"], tmp, args.peer_commit),
                fakes["peer"],
                peer_db,
                _PEER_ROWS,
                (),
            ),
        }
        ordered = ids["service"]
        batches = [ordered[i : i + args.batch] for i in range(0, len(ordered), args.batch)]
        for fake in fakes.values():
            fake.reset()  # count only the burst's calls, from full rate-limit windows
        progress(
            f"burst: {len(batches)} deliveries of {args.batch} to each,"
            f" {args.concurrency} in flight"
        )
        started = time.monotonic()
        deliverers = [Deliverer(side, batches, args, started) for side in sides.values()]
        for deliverer in deliverers:
            deliverer.start()
        watch(sides, deliverers, expected, args, started)
        for deliverer in deliverers:
            deliverer.join()
        return {name: figures(side, len(batches), expected) for name, side in sides.items()}


def watch(
    sides: dict[str, Side],
    deliverers: list[Deliverer],
    expected: dict[int, tuple[str | None, ...]],
    args: argparse.Namespace,
    started: float,
) -> None:
    """Every second, compare each database with its fake; snapshot at `--window` and at the end:
    once every delivery is answered and neither fake has seen an API call for `--settle` s (the
    peer's handlers go on after HubSpot gave up on them), or at `--max-seconds` + `--settle`."""
    tick = 0
    quiet_since, calls = dict.fromkeys(sides, 0.0), dict.fromkeys(sides, -1)
    while True:
        tick += 1
        time.sleep(max(0.0, started + tick - time.monotonic()))
        now = time.monotonic() - started
        for side in sides.values():
            ok, wrong, rows = check(side, expected)
            side.correct.append((round(now, 2), ok, wrong, rows))
            if tick == round(args.window):
                side.snapshots["window"] = snapshot(side, expected, now)
        if tick % 15 == 0:
            state = ", ".join(f"{s.name} {s.correct[-1][1]:,} correct" for s in sides.values())
            progress(f"{now:.0f} s: {state}")
        busy = any(thread.is_alive() for d in deliverers for thread in d.threads)
        for name, side in sides.items():
            count = side.fake.count()
            if busy or count != calls[name]:
                quiet_since[name], calls[name] = now, count
        quiet = {name: now - since >= args.settle for name, since in quiet_since.items()}
        done = tick >= round(args.window) and all(quiet.values())
        if done or now >= args.max_seconds + args.settle:
            for name, side in sides.items():
                side.snapshots["end"] = snapshot(side, expected, now)
                side.snapshots["end"]["quiet"] = quiet[name]
            return


def ms(values: list[float], q: float) -> float | None:
    """The q-quantile of `values` (seconds) in ms, nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1)


def figures(
    side: Side, deliveries: int, expected: dict[int, tuple[str | None, ...]]
) -> dict[str, Any]:
    """One side's figures, JSON-ready."""
    acked = [a for a in side.attempts if a.acknowledged]
    first = [a for a in side.attempts if a.attempt == 0]
    outcomes: dict[str, int] = {}
    for a in side.attempts:
        key = "200" if a.acknowledged else (f"{a.status}" if a.status else f"no answer ({a.error})")
        outcomes[key] = outcomes.get(key, 0) + 1
    converged = next((t for t, ok, _, _ in side.correct if ok == len(expected)), None)
    return {
        "deliveries": deliveries,
        "acknowledged": len({a.delivery for a in acked}),
        "acknowledged_first_attempt": sum(1 for a in first if a.acknowledged),
        "attempts": len(side.attempts),
        "retries_sent": len(side.attempts) - len(first),
        "retries_not_due_in_run": side.unsent_retries,
        "outcomes": outcomes,
        "ack_p50_ms": ms([a.seconds for a in acked], 0.5),
        "ack_max_ms": ms([a.seconds for a in acked], 1.0),
        "answer_p50_ms": ms([a.seconds for a in side.attempts], 0.5),
        "answer_max_ms": ms([a.seconds for a in side.attempts], 1.0),
        "all_correct_after_s": converged,
        "at_window": side.snapshots.get("window"),
        "at_end": side.snapshots.get("end"),
        "timeline": side.correct,
        "attempt_log": [asdict(a) for a in sorted(side.attempts, key=lambda a: a.sent_s)],
    }


def column(f: dict[str, Any], contacts: int) -> dict[str, str]:
    """One side's cells of the table."""
    w, e = f["at_window"], f["at_end"]
    converged = f["all_correct_after_s"]
    return {
        "acked": f"{f['acknowledged']} of {f['deliveries']}"
        f" ({f['acknowledged_first_attempt']} first time)",
        "attempts": f"{f['attempts']} ({f['retries_sent']} retries,"
        f" {f['retries_not_due_in_run']} not due in the run)",
        "outcomes": ", ".join(f"{k}: {v}" for k, v in sorted(f["outcomes"].items())),
        "ack": _pair(f["ack_p50_ms"], f["ack_max_ms"]),
        "answer": _pair(f["answer_p50_ms"], f["answer_max_ms"]),
        "correct_w": f"{w['records_correct']:,} of {contacts:,} ({w['records_wrong']} wrong)",
        "converged": "not in the run" if converged is None else f"{converged:.0f} s",
        "correct_e": f"{e['records_correct']:,} of {contacts:,} ({e['records_wrong']} wrong)"
        + ("" if e.get("quiet") else ", API calls going on"),
        "calls": f"{w['api_calls']:,} / {e['api_calls']:,}",
        "429s": f"{w['api_429s']:,} / {e['api_429s']:,}",
    }


def report(found: dict[str, Any], args: argparse.Namespace) -> None:
    """The side-by-side table and the headline lines."""
    service, peer = found["service"], found["peer"]
    window, end = args.window, max(service["at_end"]["at_s"], peer["at_end"]["at_s"])
    ours, theirs = column(service, args.contacts), column(peer, args.contacts)
    rows = [
        ("deliveries acknowledged (200 within 5 s)", "acked"),
        ("POSTs sent", "attempts"),
        ("answers", "outcomes"),
        ("ack p50 / max (acknowledged)", "ack"),
        ("answer time p50 / max (all POSTs)", "answer"),
        (f"records correct after {window:g} s", "correct_w"),
        ("all records correct after", "converged"),
        (f"records correct at the end (~{end:.0f} s)", "correct_e"),
        (f"API calls after {window:g} s / at the end", "calls"),
        (f"429s after {window:g} s / at the end", "429s"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\n{'':<{width}}  {'this service':<38}  peer handler")
    for name, key in rows:
        print(f"{name:<{width}}  {ours[key]:<38}  {theirs[key]}")
    print()
    for label, f in (("this service", service), ("peer handler", peer)):
        w = f["at_window"]
        print(
            f"{label}: {f['acknowledged']} of {f['deliveries']} deliveries acknowledged,"
            f" {w['records_correct']:,} of {args.contacts:,} contacts correct after {window:g} s,"
            f" {w['api_calls']:,} API calls, {w['api_429s']:,} 429s"
        )
    print("goals: issue 13 sets none for bench/peer.py, so nothing here is PASS or MISS")


def _pair(p50: float | None, top: float | None) -> str:
    return "-" if p50 is None or top is None else f"{p50:,.1f} / {top:,.1f} ms"


def retry_delays(text: str) -> list[float]:
    """`120` or `120,240` (seconds after the failure, one per retry); empty: no retries."""
    return [float(part) for part in text.split(",") if part.strip()]


def main() -> None:
    """Parse the options, run both stacks under the same burst, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100, help="events per delivery")
    parser.add_argument("--concurrency", type=int, default=10, help="deliveries in flight")
    parser.add_argument("--window", type=float, default=60, help="records compared after this")
    parser.add_argument("--retry-delays", type=retry_delays, default=[120.0])
    parser.add_argument("--jitter", type=float, default=0.2, help="each retry delay +- this")
    parser.add_argument("--max-seconds", type=float, default=300, help="no retry sent later")
    parser.add_argument("--settle", type=float, default=15, help="seconds without API calls")
    parser.add_argument("--peer-commit", choices=("delivery", "event"), default="delivery")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    started = time.monotonic()
    with (
        postgres_server(args.database_url, "peer") as (server, where),
        tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp,
    ):
        progress(f"database: {where}")
        with connect(server) as connection:
            row = connection.execute("SHOW server_version").fetchone()
        found = burst(args, server, Path(tmp))
    load = os.getloadavg()
    print(
        f"bench/peer.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"  {os.cpu_count()} CPUs"
        f" (load {load[0]:.1f})  PostgreSQL {row[0] if row else '?'} ({where}),"
        f" wall {time.monotonic() - started:.0f} s"
    )
    print(
        f"burst: {args.contacts:,} contact.creation events, deliveries of {args.batch},"
        f" {args.concurrency} in flight, 5 s timeout; retries after {args.retry_delays or 'none'} s"
        f" (+-{args.jitter:.0%}); peer commits per {args.peer_commit}"
    )
    report(found, args)
    if args.json:
        found["parameters"] = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
