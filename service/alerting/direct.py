"""The `no_worker` alert, evaluated and delivered without a worker.

The act stage delivers every other alert, but when every worker is down nothing runs the outbox,
so this condition is sent directly by whoever evaluates it: each web process (`Watch`, a thread
started by the app's lifespan when an alert target is set) and each worker's alert loop. The
change is claimed in alert_states exactly like the others (`alerts.lock` / `alerts.settle`, one
short transaction), and its messages, the same Slack text and signed webhook body the outbox
would carry (`messages.runs`), are held in the row's `pending` list in that transaction. Then,
with no transaction open, one sender leases the list, POSTs each message with short timeouts and
removes what went out; a failed send stays pending and is retried on the next round (by any
process), a rejected one (4xx, a target no longer configured) is dropped and logged. The
webhook-id of a direct message is `run_-<number>`: negative, so never an action run's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import sqlalchemy as sa

from service import actions, alerts, heartbeats
from service.alerting import messages
from service.settings import Settings

log = logging.getLogger(__name__)

KEY = "no_worker"
NO_WORKER_SECONDS = 120.0
SEND_TIMEOUT = 5.0  # seconds per connect, read or write of one send
LEASE_SECONDS = 60.0  # a sender that died mid-send leaves the messages to others after this


def no_worker(
    connection: sa.Connection, state: alerts.State, settings: Settings
) -> tuple[bool, dict[str, Any]]:
    """No worker heartbeat within NO_WORKER_SECONDS."""
    live = heartbeats.live_workers(connection, NO_WORKER_SECONDS)
    return not live, {"live": len(live), "within_seconds": NO_WORKER_SECONDS}


def evaluate(engine: sa.Engine, settings: Settings) -> alerts.Message | None:
    """Evaluate `no_worker` once; the message this process claimed (held for sending), if any."""
    with engine.begin() as connection:
        state = alerts.lock(connection, KEY)
        if state is None:  # another process is evaluating it right now
            return None
        firing, value = no_worker(connection, state, settings)
        message = alerts.settle(connection, state, firing=firing, value=value)
        if message is not None:
            entries = [
                {"number": message.number, "index": run["action_index"], "payload": run["payload"]}
                for run in messages.runs(message, settings)
            ]
            alerts.hold(connection, KEY, entries)
    if message is not None:
        log.warning("alert_" + message.kind, extra={"alert": KEY, "number": message.number})
    return message


def send_pending(engine: sa.Engine, settings: Settings) -> int:
    """Send the held messages of `no_worker` (unless another sender holds them); how many went."""
    with engine.begin() as connection:
        pending = alerts.lease(connection, KEY, LEASE_SECONDS)
    if not pending:
        return 0
    done: list[dict[str, Any]] = []
    with httpx.Client(follow_redirects=False) as http:
        for entry in sorted(pending, key=lambda e: (e["number"], e["index"])):
            if _send(http, entry, settings):
                done.append(entry)
    with engine.begin() as connection:
        alerts.delivered(connection, KEY, done)
    return len(done)


def _send(http: httpx.Client, entry: dict[str, Any], settings: Settings) -> bool:
    """One attempt; True when the message is done with (sent, or can never be)."""
    extra = {"alert": KEY, "number": entry["number"], "action_index": entry["index"]}
    options = messages.options(settings, int(entry["index"]))
    if options is None:
        log.warning("alert_dropped", extra={**extra, "error": "target not configured"})
        return True
    ctx = actions.RunContext(
        run_id=-int(entry["number"]),
        portal_id=messages.PORTAL,
        payload=entry["payload"],
        options={**options, "timeout": SEND_TIMEOUT},
        environ={},
        slack_webhook_url=None,
        api=None,
        http=http,
    )
    try:
        actions.execute(ctx)
    except actions.ActionRejected as exc:
        log.error("alert_dropped", extra={**extra, "error": str(exc)})
        return True
    except actions.ActionFailed as exc:
        log.warning("alert_send_failed", extra={**extra, "error": str(exc)})
        return False
    return True


class Watch:
    """A web process's thread evaluating and delivering `no_worker` every `interval` seconds,
    ALERT_INTERVAL unless given (first after one interval, so workers started with it have
    beaten)."""

    def __init__(
        self, engine: sa.Engine, settings: Settings, interval: float | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.interval = settings.alert_interval_seconds if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-watch", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the thread and wait for its round in progress (sends are bounded by timeouts)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def step(self) -> None:
        """One round: evaluate, then send what is held (this round's or a failed earlier one)."""
        evaluate(self.engine, self.settings)
        send_pending(self.engine, self.settings)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the database may be down: try next round
                # The type only: driver messages can quote values.
                log.error("alert_watch_failed", extra={"alert": KEY, "error": type(exc).__name__})
