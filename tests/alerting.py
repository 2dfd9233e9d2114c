"""Two workers' alert loops on one database, the act stage that delivers their messages, and
what the receiver got (the `fleet` fixture of tests/worker/conftest.py builds one)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from service import heartbeats
from service.settings import Settings
from service.worker.act import ActionRunner
from service.worker.loop import run_loop
from service.worker.upkeep import Alerts
from tests.receivers import Receiver

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

    def received(self, path: str = ALERT_HOOK_PATH) -> list[tuple[str, str]]:
        """(alert key, status) of each webhook body received (`path`: the webhook's)."""
        return [
            (r.json()["alert"], r.json()["type"].removeprefix("alert."))
            for r in self.receiver.requests
            if r.path == path
        ]

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
