"""The worker: claims due inbox rows and applies them; the one broad `except` boundary.

Each batch is claimed with FOR UPDATE SKIP LOCKED and applied in the claiming transaction, so a
crash anywhere rolls the whole batch back (nothing applied, rows still due) and several workers
never hold the same row. The mirror is applied set-based for the batch; if that fails, events
are applied one by one, each in a savepoint, so one bad event cannot hold up the others.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import actions, db, inbox, mirror, outbox
from service.events import Event, normalise
from service.hubspot.client import HubSpotApi
from service.rules.engine import Before, RuleEngine
from service.rules.language import Rule
from service.rules.registry import Registry, registry
from service.settings import Settings

log = logging.getLogger(__name__)

_ERROR_LIMIT = 4000


@dataclass
class BatchReport:
    """What one batch did, by outcome."""

    claimed: int = 0
    done: int = 0
    ignored: int = 0
    failed: int = 0
    seconds: float = 0.0


@dataclass
class Worker:
    """Applies inbox rows to the mirror and runs user handlers."""

    engine: sa.Engine
    batch_size: int = 500
    max_attempts: int = 10
    poll_seconds: float = 5.0
    handlers: Registry = field(default_factory=lambda: registry)
    rules: RuleEngine | None = None

    def run_batch(self) -> BatchReport:
        """Claim, apply and settle one batch in one transaction."""
        started = time.perf_counter()
        with self.engine.begin() as connection:
            claimed = inbox.claim_due(connection, self.batch_size)
            outcomes = self._apply(connection, claimed) if claimed else []
            inbox.settle(connection, outcomes, max_attempts=self.max_attempts)
        report = BatchReport(claimed=len(claimed), seconds=time.perf_counter() - started)
        for outcome in outcomes:
            if outcome.status == "done":
                report.done += 1
            elif outcome.status == "ignored":
                report.ignored += 1
            else:
                report.failed += 1
        if claimed:
            log.info(
                "batch_applied",
                extra={
                    "claimed": report.claimed,
                    "done": report.done,
                    "ignored": report.ignored,
                    "failed": report.failed,
                    "ms": round(report.seconds * 1000, 1),
                },
            )
        return report

    def drain(self) -> int:
        """Apply batches until nothing is due; returns the number of rows claimed."""
        total = 0
        while (report := self.run_batch()).claimed:
            total += report.claimed
        return total

    def run(self, stop: threading.Event) -> None:
        """Apply until `stop` is set; wake on the ingest NOTIFY, poll as a fallback.

        `stop` is only checked between batches: the current batch always finishes.
        """
        listener: psycopg.Connection[object] | None = None
        log.info("worker_started", extra={"batch_size": self.batch_size})
        while not stop.is_set():
            try:
                if listener is None:
                    listener = self._listen()
                if self.run_batch().claimed:
                    continue
                self._wait(listener, stop)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive database blips
                # The type only: driver messages can quote row values (personal data).
                log.error("worker_error", extra={"error": type(exc).__name__})
                if listener is not None:
                    listener.close()
                    listener = None
                stop.wait(min(self.poll_seconds, 5.0))
        if listener is not None:
            listener.close()
        log.info("worker_stopped")

    def _listen(self) -> psycopg.Connection[object]:
        url = db.libpq_url(self.engine.url.render_as_string(hide_password=False))
        connection: psycopg.Connection[object] = psycopg.connect(url, autocommit=True)
        connection.execute(f"LISTEN {inbox.INBOX_CHANNEL}")
        return connection

    def _wait(self, listener: psycopg.Connection[object], stop: threading.Event) -> None:
        deadline = time.monotonic() + self.poll_seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices so a stop request is seen within a second.
            if list(listener.notifies(timeout=min(remaining, 1.0), stop_after=1)):
                return

    def _apply(
        self, connection: sa.Connection, claimed: list[inbox.Claimed]
    ) -> list[inbox.Outcome]:
        outcomes: dict[int, inbox.Outcome] = {}
        events: list[Event] = []
        for row in claimed:
            try:
                events.append(normalise(row.id, row.payload))
            except Exception as exc:  # noqa: BLE001 - a malformed row fails alone
                outcomes[row.id] = _failed(row.id, exc)
        before = self.rules.before(connection, events) if self.rules is not None else {}
        try:
            with connection.begin_nested():
                mirror.apply_events(connection, events)
        except Exception:  # noqa: BLE001 - find the culprit by applying one at a time
            log.warning("batch_apply_failed_retrying_singly", extra={"events": len(events)})
            for event in events:
                try:
                    with connection.begin_nested():
                        mirror.apply_events(connection, [event])
                except Exception as exc:  # noqa: BLE001 - this event fails, the rest go on
                    outcomes[event.inbox_id] = _failed(event.inbox_id, exc)
        # Rules fire for every event the mirror took, before user handlers run: a handler that
        # fails has its event retried, and by then the mirror holds the change already.
        mirrored = [e for e in events if e.inbox_id not in outcomes]
        handled = self._fire(connection, mirrored, before, outcomes)
        for event in events:
            if event.inbox_id in outcomes:
                continue
            handlers = self.handlers.handlers_for(event)
            if not handlers:
                continue
            try:
                # rollback_only: the session neither commits nor discards the savepoint on
                # close; the savepoint is ours, released or rolled back here.
                with (
                    connection.begin_nested(),
                    Session(bind=connection, join_transaction_mode="rollback_only") as session,
                ):
                    for handler in handlers:
                        handler(event, session)
                    session.flush()
            except Exception as exc:  # noqa: BLE001 - a user handler fails its event only
                outcomes[event.inbox_id] = _failed(event.inbox_id, exc)
                continue
            handled.add(event.inbox_id)
        for event in events:
            if event.inbox_id in outcomes:
                continue
            done = event.inbox_id in handled or mirror.handles(event)
            outcomes[event.inbox_id] = inbox.Outcome(event.inbox_id, "done" if done else "ignored")
        return [outcomes[row.id] for row in claimed]

    def _fire(
        self,
        connection: sa.Connection,
        events: list[Event],
        before: dict[int, Before],
        outcomes: dict[int, inbox.Outcome],
    ) -> set[int]:
        """Write the batch's action runs; if that fails, one event at a time."""
        if self.rules is None or not events:
            return set()
        try:
            with connection.begin_nested():
                return self.rules.fire(connection, events, before)
        except Exception:  # noqa: BLE001 - find the event whose rule cannot fire
            log.warning("rules_fire_failed_retrying_singly", extra={"events": len(events)})
        fired: set[int] = set()
        for event in events:
            try:
                with connection.begin_nested():
                    fired |= self.rules.fire(connection, [event], before)
            except Exception as exc:  # noqa: BLE001 - this event fails, the rest go on
                outcomes[event.inbox_id] = _failed(event.inbox_id, exc)
        return fired


def _failed(row_id: int, exc: BaseException) -> inbox.Outcome:
    detail = "".join(traceback.format_exception(exc))
    return inbox.Outcome(row_id, "failed", f"{type(exc).__name__}: {exc}\n{detail}"[:_ERROR_LIMIT])


def run_loop(
    name: str, step: Callable[[], int], stop: threading.Event, *, idle_seconds: float
) -> None:
    """Call `step` until `stop` is set; pause `idle_seconds` whenever it found nothing to do.

    For the stages that call out (hydrate, later act): an error is logged and the loop goes on.
    """
    log.info("loop_started", extra={"loop": name})
    while not stop.is_set():
        try:
            if step():
                continue
        except Exception as exc:  # noqa: BLE001 - a stage must outlive any one failure
            log.error("loop_error", extra={"loop": name, "error": type(exc).__name__})
        stop.wait(idle_seconds)
    log.info("loop_stopped", extra={"loop": name})


@dataclass
class ActionRunner:
    """Executes due action runs (the act stage): network I/O, never inside a transaction."""

    engine: sa.Engine
    rules: Sequence[Rule]
    settings: Settings
    api: HubSpotApi | None = None
    batch_size: int = 20
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    def run_once(self) -> int:
        """Lease and execute up to `batch_size` due runs; returns how many."""
        with self.engine.begin() as connection:
            runs = outbox.claim(connection, self.batch_size)
        for run in runs:
            self._execute(run)
        return len(runs)

    def drain(self) -> int:
        """Execute until nothing is due."""
        total = 0
        while count := self.run_once():
            total += count
        return total

    def close(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            self._http.close()

    def _options(self, run: outbox.Run) -> Mapping[str, Any] | None:
        for rule in self.rules:
            if rule.name == run.rule and run.action_index < len(rule.actions):
                return rule.actions[run.action_index].options
        return None

    def _execute(self, run: outbox.Run) -> None:
        if self._http is None:
            self._http = httpx.Client(follow_redirects=False)
        options = self._options(run)
        error: str | None = None
        permanent = False
        retry_after: float | None = None
        outcome: actions.Outcome | None = None
        if options is None and run.payload.get("action") != "log":
            error, permanent = (
                f"rule {run.rule!r} (action {run.action_index}) no longer exists",
                True,
            )
        else:
            context = actions.RunContext(
                run_id=run.id,
                portal_id=run.portal_id,
                payload=run.payload,
                options=options or {},
                environ=self.settings.environ,
                slack_webhook_url=self.settings.slack_webhook_url,
                api=self.api,
                http=self._http,
            )
            try:
                outcome = actions.execute(context)
            except actions.ActionFailed as exc:
                error, permanent = str(exc), isinstance(exc, actions.ActionRejected)
                retry_after = exc.retry_after
            except Exception as exc:  # noqa: BLE001 - an executor bug fails its run, not the loop
                error = f"{type(exc).__name__}: {exc}"
        with self.engine.begin() as connection:
            if outcome is not None:
                outbox.complete(connection, run.id, outcome.summary)
                if outcome.created is not None:
                    outbox.record_own_write(connection, run.portal_id, *outcome.created)
                log.info("action_done", extra={"run_id": run.id, "action": run.action})
                return
            status = outbox.fail(
                connection,
                run.id,
                error or "unknown error",
                max_attempts=self.settings.action_max_attempts,
                permanent=permanent,
                retry_after=retry_after,
            )
        log.warning(
            "action_failed",
            extra={"run_id": run.id, "action": run.action, "status": status, "rule": run.rule},
        )
