"""Two workers' alert loops on one database, the act stage that delivers their messages, and
what the receiver got (the `fleet` fixture of tests/worker/conftest.py builds one); and real
`worker` processes for the alert tests that run the commands (`worker_process`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service import db, heartbeats
from service.settings import Settings
from service.worker.act import ActionRunner
from service.worker.loop import run_loop
from service.worker.upkeep import Alerts
from tests.factories import WEBHOOK_SECRET
from tests.receivers import Receiver
from tests.support import ROOT

ALERT_SLACK_PATH = "/alerts/slack"
ALERT_HOOK_PATH = "/alerts/hook"


@dataclass
class AlertFleet:
    """Two workers' alert loops (an engine each), the act stage that delivers their messages,
    and the receiver standing for Slack (ALERT_SLACK_PATH) and the webhook (ALERT_HOOK_PATH)."""

    engine: sa.Engine
    settings: Settings
    loops: list[Alerts]
    runner: ActionRunner
    receiver: Receiver

    def run_loops(self, seconds: float = 0.6) -> None:
        """Run both alert loops concurrently, each in its own thread, for `seconds`."""
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=run_loop,
                args=(f"alerts-{n}", alerts.step, stop),
                kwargs={"idle_seconds": 0.01},
            )
            for n, alerts in enumerate(self.loops)
        ]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join(10)

    def deliver(self) -> int:
        """The act stage until nothing is due; returns how many runs it executed."""
        return self.runner.drain()

    def received(self) -> list[tuple[str, str]]:
        """(alert key, status) of each webhook body delivered."""
        return received(self.receiver)

    def slack_texts(self) -> list[str]:
        """The text of each Slack message received."""
        return [r.json()["text"] for r in self.receiver.requests if r.path == ALERT_SLACK_PATH]

    def beat(self, worker_id: str = "worker-under-test") -> None:
        """A live worker heartbeat (without one, `no_worker` fires)."""
        with self.engine.begin() as connection:
            heartbeats.beat(connection, worker_id, host="test", pid=1, stages=["apply"])

    def sql(self, statement: str, **params: Any) -> None:
        """Change the database as time or another process would (tests move time, never sleep)."""
        with self.engine.begin() as connection:
            connection.execute(sa.text(statement), params)


@contextmanager
def alert_fleet(
    url: str, engine: sa.Engine, receiver: Receiver, **env: str
) -> Iterator[AlertFleet]:
    """Two workers' alert loops (an engine each, as two processes would have) on the database at
    `url`, with Slack and a signed webhook configured on the local receiver, ALERT_LAG 5m unless
    `env` says otherwise, and one live worker heartbeat."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": url,
            "ALERT_SLACK_WEBHOOK_URL": receiver.url_for(ALERT_SLACK_PATH),
            "ALERT_WEBHOOK_URL": receiver.url_for(ALERT_HOOK_PATH),
            "ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "ALERT_LAG": "5m",
            **env,
        }
    )
    engines = [db.create_engine(url, pool_size=2) for _ in range(2)]
    runner = ActionRunner(engine, [], settings)
    fleet = AlertFleet(engine, settings, [Alerts(e, settings) for e in engines], runner, receiver)
    fleet.beat()
    try:
        yield fleet
    finally:
        runner.close()
        for e in engines:
            e.dispose()


def received(receiver: Receiver) -> list[tuple[str, str]]:
    """(alert key, status) of each alert webhook body the receiver answered 200, in order."""
    return [
        (r.json()["alert"], r.json()["type"].removeprefix("alert."))
        for r in receiver.requests
        if r.path == ALERT_HOOK_PATH and r.status == 200
    ]


def wait_until(check: Callable[[], bool], what: str, logs: list[Path], seconds: float = 30) -> None:
    """Poll `check` until it holds; fail naming `what`, with the processes' output, if it
    takes longer than `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            output = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in logs)
            raise AssertionError(f"no {what} within {seconds} s\n{output}")
        time.sleep(0.05)


@contextmanager
def worker_process(env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m service worker` with exactly `env` (plus PATH, HOME and TMPDIR), its output in
    `log`; stopped with SIGTERM at the end (killed if it has not exited 15 s later)."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env={**base, **env},
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)
