"""SIGKILL of the real `worker` process mid-apply and mid-act, again and again (issue 10).

A backlog of HubSpot-shaped events, with rules firing a signed webhook (Standard Webhooks) at a
local receiver, drains through `python -m service worker`, which is killed five times at points
drawn from a seeded random generator (twice while it applies a batch, three times while it
delivers) and restarted each time. After each kill the killed worker's action leases are expired
(as 300 s would), which is when a run it had posted is delivered again: with the same
webhook-id, which a Standard Webhooks consumer drops.

Then: every event applied once, every action run done and delivered under one webhook-id (each
delivery's signature valid), the runs those of an undisturbed apply of the same events, and the
mirror equal to that undisturbed run's. The figures are logged (`worker_kill_figures`) and
recorded as the test's properties (--junitxml).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from service.rules.engine import load_engine
from service.rules.registry import Registry
from service.settings import Settings
from service.worker.apply import Worker
from tests.factories import HOOK_PATH, WEBHOOK_SECRET, assoc, change, hs
from tests.receivers import Receiver
from tests.support import dump, empty_tables, store_events

log = logging.getLogger(__name__)

Raw = dict[str, Any]

EVENTS = 3_000
CONTACTS = 150
COMPANIES = 50
BATCH_SIZE = 50  # small batches: apply takes long enough to be caught mid-batch
DELIVERY_SECONDS = 0.01  # the receiver's latency: act takes long enough to be caught mid-run
SEED = 20261130
WAIT_SECONDS = 60
# Where the worker is killed: during apply at a fraction of the events done, during act at a
# fraction of the runs delivered (each jittered by the seeded generator).
KILLS = (("apply", 0.25), ("apply", 0.6), ("act", 0.3), ("act", 0.55), ("act", 0.8))

RULES = """
[[rules]]
name = "contact-created"
[rules.when]
object = "contacts"
kind = "creation"
[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"

[[rules]]
name = "lifecycle"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"
"""


def backlog(rnd: random.Random) -> list[Raw]:
    """Creations, then property changes (a third of them lifecycle stages) and associations."""
    contacts = list(range(1, CONTACTS + 1))
    companies = list(range(100_001, 100_001 + COMPANIES))
    events = [hs("contact.creation", i, 1_000 + rnd.randrange(1_000)) for i in contacts]
    events += [hs("company.creation", i, 1_000 + rnd.randrange(1_000)) for i in companies]
    while len(events) < EVENTS:
        at = 2_000 + rnd.randrange(100_000)
        roll = rnd.random()
        if roll < 0.15:
            stage = rnd.choice(("lead", "marketingqualifiedlead", "salesqualifiedlead", "customer"))
            events.append(change("contact", rnd.choice(contacts), at, "lifecyclestage", stage))
        elif roll < 0.55:
            events.append(change("contact", rnd.choice(contacts), at, "email", f"v{at}@x.test"))
        elif roll < 0.8:
            events.append(change("company", rnd.choice(companies), at, "name", f"Co {at}"))
        else:
            contact, company = rnd.choice(contacts), rnd.choice(companies)
            events.append(
                assoc("CONTACT_TO_COMPANY", contact, company, at, removed=rnd.random() < 0.3)
            )
    rnd.shuffle(events)
    return events


def store(url: str, events: list[Raw]) -> None:
    """Store the events as HubSpot would deliver them, a few hundred per request."""
    assert sum(store_events(url, events[i : i + 500]) for i in range(0, len(events), 500)) == len(
        events
    )


def count(engine: sa.Engine, sql: str) -> int:
    """One number from the database."""
    with engine.connect() as connection:
        return int(connection.scalar(sa.text(sql)) or 0)


def fired_runs(engine: sa.Engine) -> Counter[tuple[Any, ...]]:
    """The action runs by the identity of the event that fired them, rule and action."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT i.event_id, i.object_id, i.occurred_at, a.rule, a.action_index"
                " FROM action_runs a JOIN inbox_events i ON i.id = a.inbox_id"
            )
        ).all()
    return Counter(tuple(row) for row in rows)


def applying_backends(engine: sa.Engine) -> set[int]:
    """Backends in a writing transaction that holds inbox rows: a batch being applied."""
    with engine.connect() as connection:
        return set(
            connection.scalars(
                sa.text(
                    "SELECT DISTINCT a.pid FROM pg_stat_activity a"
                    " JOIN pg_locks l ON l.pid = a.pid JOIN pg_class c ON c.oid = l.relation"
                    " WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
                    " AND a.backend_xid IS NOT NULL AND c.relname LIKE 'inbox_events%'"
                )
            )
        )


def leased_runs(engine: sa.Engine) -> int:
    """Action runs an act stage has claimed and not settled yet (their lease is running)."""
    return count(
        engine,
        "SELECT count(*) FROM action_runs WHERE status IN ('pending', 'failed')"
        " AND attempts > 0 AND next_attempt_at > now() + interval '200 seconds'",
    )


def backends_gone(engine: sa.Engine, pids: set[int]) -> bool:
    """Whether Postgres has ended these backends (and rolled their transactions back)."""
    return not pids or not count(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE pid IN (" + ",".join(map(str, pids)) + ")",
    )


def expire_leases(engine: sa.Engine) -> int:
    """What 300 s would do to a killed worker's leases: its unfinished runs are due again."""
    with engine.begin() as connection:
        return int(
            connection.execute(
                sa.text(
                    "UPDATE action_runs SET next_attempt_at = now()"
                    " WHERE status IN ('pending', 'failed') AND next_attempt_at > now()"
                )
            ).rowcount
        )


def wait_for(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until `condition` holds; fail if the worker exits first or it takes too long."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert process is None or process.poll() is None, f"the worker exited before {what}"
        assert time.monotonic() < deadline, f"no {what} after {WAIT_SECONDS} s"
        time.sleep(0.005)


def kill(
    process: subprocess.Popen[bytes],
    stage: str,
    at: float,
    *,
    engine: sa.Engine,
    receiver: Receiver,
    runs: int,
) -> set[int]:
    """SIGKILL the worker once it applies a batch past `at` of the events ("apply"), or holds
    leased runs past `at` of the runs delivered ("act"); the backends it was applying in."""
    in_flight: set[int] = set()

    def mid_apply() -> bool:
        done = count(engine, "SELECT count(*) FROM inbox_events WHERE status = 'done'")
        in_flight.clear()
        if at * EVENTS <= done < EVENTS:
            in_flight.update(applying_backends(engine))
        return bool(in_flight)

    def mid_act() -> bool:
        delivered = len({r.headers["webhook-id"] for r in receiver.requests})
        return delivered >= at * runs and leased_runs(engine) > 0

    if stage == "apply":
        wait_for(mid_apply, f"a batch in flight after {at:.0%} of the events", process)
    else:
        wait_for(mid_act, f"a run in flight after {at:.0%} of the runs were delivered", process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=15) == -signal.SIGKILL
    return in_flight


@contextmanager
def workers(env: dict[str, str], logs: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start `python -m service worker` processes (output in `logs`); kill any left running."""
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start() -> subprocess.Popen[bytes]:
        out = (logs / f"worker-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"], env=env, stdout=out, stderr=out
        )
        started.append((process, out))
        return process

    try:
        yield start
    finally:
        for process, out in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=15)
            out.close()


def test_a_worker_killed_mid_apply_and_mid_act_five_times_applies_and_delivers_everything_once(
    clean_db: str,
    engine: sa.Engine,
    receiver: Receiver,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    rnd = random.Random(SEED)
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env |= {
        "DATABASE_URL": clean_db,
        "DATA_DIR": str(tmp_path / "data"),
        "RULES_FILE": str(rules_file),
        "HOOK_URL": receiver.url_for(HOOK_PATH),
        "HOOK_SECRET": WEBHOOK_SECRET,
        "WORKER_BATCH_SIZE": str(BATCH_SIZE),
        "WORKER_POLL_SECONDS": "0.2",
        "LOG_LEVEL": "WARNING",
    }
    events = backlog(rnd)

    # The undisturbed run: the same events applied in-process, in batches of the same size.
    store(clean_db, events)
    rule_engine = load_engine(Settings.from_env(env), [])
    Worker(engine, batch_size=BATCH_SIZE, handlers=Registry(), rules=rule_engine).drain()
    expected_mirror, expected_runs = dump(engine), fired_runs(engine)
    runs = sum(expected_runs.values())
    assert runs > 200, "the backlog should fire a few hundred runs"
    empty_tables(engine)
    store(clean_db, events)

    receiver.latency(DELIVERY_SECONDS)
    started = time.monotonic()
    killed_mid: Counter[str] = Counter()
    redue = 0
    with workers(env, tmp_path) as start:
        for stage, fraction in KILLS:
            at = fraction + rnd.uniform(-0.1, 0.1)
            in_flight = kill(start(), stage, at, engine=engine, receiver=receiver, runs=runs)
            wait_for(partial(backends_gone, engine, in_flight), "the killed batch rolled back")
            done = count(engine, "SELECT count(*) FROM inbox_events WHERE status = 'done'")
            assert done % BATCH_SIZE == 0 or done == EVENTS, f"part of a batch was kept: {done}"
            killed_mid[stage] += 1
            redue += expire_leases(engine)

        last = start()
        wait_for(
            lambda: (
                count(engine, "SELECT count(*) FROM action_runs WHERE status <> 'done'") == 0
                and count(engine, "SELECT count(*) FROM inbox_events WHERE status <> 'done'") == 0
            ),
            "every event and every run done",
            last,
        )
        drained = time.monotonic() - started
        last.send_signal(signal.SIGTERM)
        assert last.wait(timeout=30) == 0
    outputs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
    assert "Traceback" not in outputs, outputs

    # Every event applied once, and the mirror as if nothing had happened.
    actual_mirror = dump(engine)
    assert {row[6:] for row in actual_mirror["inbox_events"]} == {("done", 1)}
    assert actual_mirror == expected_mirror
    # Every run fired once, done, and delivered under its own webhook-id (a repeat only ever
    # with the same id and body, which the receiver's dedupe drops).
    assert fired_runs(engine) == expected_runs
    with engine.connect() as connection:
        run_ids = connection.scalars(sa.text("SELECT id FROM action_runs")).all()
    # A request cut short by the kill is no delivery: a consumer reads the whole body first.
    deliveries = [
        r for r in receiver.requests if len(r.body) == int(r.headers.get("content-length", -1))
    ]
    by_id: dict[str, set[bytes]] = {}
    for delivery in deliveries:
        assert delivery.path == HOOK_PATH
        Webhook(WEBHOOK_SECRET).verify(delivery.body, delivery.headers)
        by_id.setdefault(delivery.headers["webhook-id"], set()).add(delivery.body)
    assert set(by_id) == {f"run_{i}" for i in run_ids}
    assert all(len(bodies) == 1 for bodies in by_id.values())

    figures = {
        "events": EVENTS,
        "kills_mid_apply": killed_mid["apply"],
        "kills_mid_act": killed_mid["act"],
        "action_runs": len(run_ids),
        "deliveries": len(deliveries),
        "distinct_webhook_ids": len(by_id),
        "repeated_deliveries": len(deliveries) - len(by_id),
        "leases_expired": redue,
        "seconds_to_drain": round(drained, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
    log.info("worker_kill_figures %s", " ".join(f"{k}={v}" for k, v in figures.items()))
