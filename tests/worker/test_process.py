"""A real `worker` process killed mid-batch, or asked to stop, loses and doubles nothing.

DESIGN.md: a batch is claimed, applied and settled in one transaction, so a crash anywhere rolls
the whole batch back (nothing applied, rows still due); SIGTERM lets the current batch finish.
The worker runs as `python -m service worker`, as a platform runs it; rows are read back from
Postgres and the mirror is compared with an uninterrupted in-process run of the same events.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa

from service.events import Event
from service.rules.registry import Registry, registry
from service.settings import Settings
from service.worker.apply import Worker
from service.worker.process import load_rules
from tests.factories import assoc, change, hs
from tests.support import EXAMPLE_RULES, dump, empty_tables, store_events

Raw = dict[str, Any]

BATCH_SIZE = 200
WAIT_SECONDS = 120
CONTACT_PROPERTIES = ("email", "firstname", "lastname", "lifecyclestage")
COMPANY_PROPERTIES = ("name", "domain", "numberofemployees")


def backlog(count: int, *, objects: int, seed: int = 7) -> list[Raw]:
    """Creations of `objects` records, then property changes and associations between them."""
    rnd = random.Random(seed)
    contacts = list(range(1, objects * 3 // 4 + 1))
    companies = list(range(100_001, 100_001 + objects - len(contacts)))
    events = [hs("contact.creation", i, 1_000 + rnd.randrange(1_000)) for i in contacts]
    events += [hs("company.creation", i, 1_000 + rnd.randrange(1_000)) for i in companies]
    while len(events) < count:
        at = 2_000 + rnd.randrange(100_000)
        roll = rnd.random()
        if roll < 0.6:
            prop = rnd.choice(CONTACT_PROPERTIES)
            events.append(
                change("contact", rnd.choice(contacts), at, prop, f"v{rnd.randrange(40)}")
            )
        elif roll < 0.8:
            prop = rnd.choice(COMPANY_PROPERTIES)
            events.append(
                change("company", rnd.choice(companies), at, prop, str(rnd.randrange(40)))
            )
        else:
            contact, company = rnd.choice(contacts), rnd.choice(companies)
            removed, primary = rnd.random() < 0.3, rnd.random() < 0.2
            events.append(
                assoc("CONTACT_TO_COMPANY", contact, company, at, removed=removed, primary=primary)
                if rnd.random() < 0.5
                else assoc(
                    "COMPANY_TO_CONTACT", company, contact, at, removed=removed, primary=primary
                )
            )
    rnd.shuffle(events)
    return events


def store_backlog(url: str, events: list[Raw], *, chunk: int = 500) -> None:
    """Store the events as HubSpot would deliver them, a few hundred per request."""
    stored = sum(store_events(url, events[i : i + chunk]) for i in range(0, len(events), chunk))
    assert stored == len(events)


def statuses(engine: sa.Engine) -> dict[str, int]:
    """Inbox rows by status."""
    with engine.connect() as connection:
        return dict(
            connection.execute(
                sa.text("SELECT status, count(*) FROM inbox_events GROUP BY status")
            ).all()
        )


def batches_in_flight(engine: sa.Engine) -> set[int]:
    """Backends of other sessions in a writing transaction (a worker holding a claimed batch)."""
    with engine.connect() as connection:
        return set(
            connection.scalars(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
                )
            )
        )


def wait_until_gone(engine: sa.Engine, pids: set[int]) -> None:
    """Wait until Postgres has noticed these backends' client died and ended them."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            alive = connection.scalar(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                {"pids": sorted(pids)},
            )
        if not alive:
            return
        time.sleep(0.05)
    pytest.fail(f"backends {pids} still there {WAIT_SECONDS} s after their client was killed")


@dataclass
class WorkerProcess:
    """A running `python -m service worker` subprocess."""

    process: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def output(self) -> str:
        """Everything the worker wrote so far."""
        self.log_file.flush()
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` until it holds; fail if the worker dies first or it takes too long."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(
                    f"worker exited with {self.process.returncode} before {what}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {WAIT_SECONDS} s:\n{self.output()}")
            time.sleep(0.01)


@pytest.fixture
def spawn_worker(clean_db: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses on the clean database (keyword arguments: more environment);
    any still running at the end is killed."""
    started: list[WorkerProcess] = []
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env.update(
        DATABASE_URL=clean_db,
        DATA_DIR=str(tmp_path / "data"),
        WORKER_BATCH_SIZE=str(BATCH_SIZE),
        WORKER_POLL_SECONDS="0.2",
        LOG_LEVEL="INFO",
    )

    def spawn(name: str, **extra: str) -> WorkerProcess:
        log = tmp_path / f"{name}.log"
        log_file = log.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env={**env, **extra},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        started.append(WorkerProcess(process, log, log_file))
        return started[-1]

    yield spawn
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(timeout=15)
        worker.log_file.close()


def apply_in_process(url: str, engine: sa.Engine, events: list[Raw]) -> dict[str, Any]:
    """The uninterrupted run: a fresh inbox, drained by an in-process worker; its dump."""
    empty_tables(engine)
    store_backlog(url, events)
    Worker(engine, batch_size=500, handlers=Registry()).drain()
    return dump(engine)


def test_worker_killed_mid_batch_then_restarted_applies_every_event_exactly_once(
    clean_db: str, engine: sa.Engine, spawn_worker: Callable[[str], WorkerProcess]
) -> None:
    events = backlog(20_000, objects=2_000)
    expected = apply_in_process(clean_db, engine, events)
    empty_tables(engine)
    store_backlog(clean_db, events)
    total = len(events)

    first = spawn_worker("killed")
    in_flight: set[int] = set()

    def mid_batch() -> bool:
        in_flight.clear()
        if statuses(engine).get("done", 0) >= total // 5:
            in_flight.update(batches_in_flight(engine))
        return bool(in_flight)

    first.wait_for(mid_batch, "a batch in flight after a fifth of the backlog")
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(timeout=15) == -signal.SIGKILL
    # Postgres notices the dead client and rolls its open batch back.
    wait_until_gone(engine, in_flight)
    after_kill = statuses(engine)
    assert set(after_kill) <= {"done", "pending"}, after_kill
    assert after_kill.get("pending", 0) > 0, "the worker finished before it was killed"
    assert after_kill["done"] % BATCH_SIZE == 0, f"part of a batch was kept: {after_kill}"

    second = spawn_worker("restarted")
    second.wait_for(lambda: statuses(engine) == {"done": total}, "every row done")
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=30) == 0, second.output()
    assert "Traceback" not in first.output() + second.output()

    actual = dump(engine)
    assert {row[6:] for row in actual["inbox_events"]} == {("done", 1)}
    assert actual == expected


def test_sigterm_finishes_the_current_batch_and_exits_0(
    clean_db: str, engine: sa.Engine, spawn_worker: Callable[[str], WorkerProcess]
) -> None:
    events = backlog(10_000, objects=1_000)
    store_backlog(clean_db, events)

    worker = spawn_worker("stopped")
    worker.wait_for(
        lambda: statuses(engine).get("done", 0) >= 1_000 and bool(batches_in_flight(engine)),
        "a batch in flight after 1,000 rows",
    )
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0, worker.output()
    output = worker.output()
    assert "worker_stopped" in output
    assert "Traceback" not in output

    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT status, attempts, processed_at IS NOT NULL AS processed, count(*) AS n"
                " FROM inbox_events GROUP BY 1, 2, 3"
            )
        ).all()
        done = connection.execute(
            sa.text("SELECT payload FROM inbox_events WHERE status = 'done' ORDER BY id")
        ).scalars()
        done_events = [dict(payload) for payload in done]
    by_state = {(r.status, r.attempts, r.processed): r.n for r in rows}
    assert set(by_state) <= {("done", 1, True), ("pending", 0, False)}, by_state
    assert by_state.get(("pending", 0, False), 0) > 0, "the worker finished before SIGTERM"
    assert len(done_events) % BATCH_SIZE == 0, f"a batch was cut short: {by_state}"

    # Never half: the mirror holds exactly what applying the done rows (and only them) gives.
    mirror = {k: v for k, v in dump(engine).items() if k != "inbox_events"}
    reference = apply_in_process(clean_db, engine, done_events)
    assert mirror == {k: v for k, v in reference.items() if k != "inbox_events"}


def test_loading_rules_says_how_many_came_from_the_file_and_from_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    @registry.rule(
        "code-rule",
        when={"object": "contacts", "kind": "creation"},
        do=[{"action": "log", "message": "created"}, {"action": "log", "message": "again"}],
    )
    def always(event: Event) -> bool:
        return True

    settings = Settings.from_env({"RULES_FILE": str(EXAMPLE_RULES), "DATA_DIR": str(tmp_path)})
    try:
        with caplog.at_level(logging.INFO, logger="service.worker.process"):
            engine = load_rules(settings)
    finally:
        registry.clear()

    assert engine is not None
    assert len(engine.rules) == 5
    (loaded,) = [r for r in caplog.records if r.getMessage() == "rules_loaded"]
    assert getattr(loaded, "summary", None) == (
        f"4 rules, 5 actions from {EXAMPLE_RULES}; 1 code rules"
    )
    assert (getattr(loaded, "rules", None), getattr(loaded, "code_rules", None)) == (4, 1)


def test_without_rules_file_loading_rules_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})

    with caplog.at_level(logging.INFO, logger="service.worker.process"):
        assert load_rules(settings) is None

    (loaded,) = [r for r in caplog.records if r.getMessage() == "rules_loaded"]
    assert getattr(loaded, "summary", None) == "no RULES_FILE; 0 code rules"


def test_a_running_worker_beats_and_removes_its_heartbeat_on_sigterm(
    engine: sa.Engine, spawn_worker: Callable[[str], WorkerProcess]
) -> None:
    def heartbeat_rows() -> list[Any]:
        with engine.connect() as connection:
            return list(connection.execute(sa.text("SELECT * FROM worker_heartbeats")))

    worker = spawn_worker("beating")
    worker.wait_for(lambda: len(heartbeat_rows()) == 1, "heartbeat row")

    [row] = heartbeat_rows()
    assert row.pid == worker.process.pid
    assert row.stages == ["apply", "act", "partitions"], "no API: no hydrate stage"
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=WAIT_SECONDS) == 0
    assert heartbeat_rows() == [], "a clean exit deletes its row"


def test_a_worker_with_an_alert_target_runs_the_alert_loop(
    engine: sa.Engine, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    def stages() -> list[list[str]]:
        with engine.connect() as connection:
            return list(connection.scalars(sa.text("SELECT stages FROM worker_heartbeats")))

    worker = spawn_worker("alerting", ALERT_SLACK_WEBHOOK_URL="http://127.0.0.1:9/alerts")
    worker.wait_for(lambda: len(stages()) == 1, "heartbeat row")

    assert stages() == [["apply", "act", "alerts", "partitions"]]
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=WAIT_SECONDS) == 0


def test_a_worker_told_not_to_keep_partitions_runs_no_partitions_stage(
    engine: sa.Engine, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    # bench/soak.py keeps the partitions itself, on an accelerated clock the worker's would undo.
    def stages() -> list[list[str]]:
        with engine.connect() as connection:
            return list(connection.scalars(sa.text("SELECT stages FROM worker_heartbeats")))

    worker = spawn_worker("no-upkeep", WORKER_PARTITION_UPKEEP="off")
    worker.wait_for(lambda: len(stages()) == 1, "heartbeat row")

    assert stages() == [["apply", "act"]]
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=WAIT_SECONDS) == 0
