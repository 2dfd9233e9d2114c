"""The apply stage: claim due inbox rows, apply them to the mirror, fire rules, run handlers.

Each batch is claimed with FOR UPDATE SKIP LOCKED and applied in the claiming transaction, so a
crash anywhere rolls the whole batch back (nothing applied, rows still due) and several workers
never hold the same row. The mirror is applied set-based for the batch; if that fails, events
are applied one by one, each in a savepoint, so one bad event cannot hold up the others.

With `dedupe_changes` (HUBSPOT_EVENT_SOURCE journal or both: one change can arrive as a webhook
and as a journal event) each event the mirror took claims its change (`changes.claim_first`, in
the batch's transaction); a copy of a change another inbox row owns is settled done without
reaching rules or user handlers. Its mirror write was harmless: last writer wins.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import changes, db, inbox, mirror
from service.events import Event, InvalidEvent, Kind, change_key, normalise
from service.rules.engine import Before, RuleEngine
from service.rules.registry import Registry, registry
from service.worker.loop import Wakeup, run_loop

log = logging.getLogger(__name__)

_ERROR_LIMIT = 4000


@dataclass
class BatchReport:
    """What one batch did, by outcome."""

    claimed: int = 0
    done: int = 0
    ignored: int = 0
    failed: int = 0
    copies: int = 0  # done without firing: another inbox row owns their change
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
    # Rules and handlers once per change, not per copy (events arrive by webhook and journal).
    dedupe_changes: bool = False
    # When a batch was last claimed, for the heartbeat thread to read (a round trip saved).
    last_batch_at: datetime | None = field(default=None, init=False)

    def run_batch(self) -> BatchReport:
        """Claim, apply and settle one batch in one transaction."""
        started = time.perf_counter()
        with self.engine.begin() as connection:
            claimed = inbox.claim_due(connection, self.batch_size)
            if claimed:
                self.last_batch_at = db.utcnow()
            copies: set[int] = set()
            outcomes = self._apply(connection, claimed, copies) if claimed else []
            inbox.settle(connection, outcomes, max_attempts=self.max_attempts)
        report = BatchReport(claimed=len(claimed), seconds=time.perf_counter() - started)
        report.copies = len(copies)
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
                    "copies": report.copies,
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
        log.info("worker_started", extra={"batch_size": self.batch_size})
        run_loop(
            "apply",
            lambda: self.run_batch().claimed,
            stop,
            idle_seconds=self.poll_seconds,
            wakeup=Wakeup(self.engine, inbox.INBOX_CHANNEL),
            error_seconds=min(self.poll_seconds, 5.0),
        )
        log.info("worker_stopped")

    def _apply(
        self, connection: sa.Connection, claimed: list[inbox.Claimed], copies: set[int]
    ) -> list[inbox.Outcome]:
        """Apply the claimed rows; `copies` gets the ids of those settled as another's copy."""
        outcomes: dict[int, inbox.Outcome] = {}
        rows = {row.id: row for row in claimed}
        events = _normalised(claimed, outcomes)
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
                    outcomes[event.inbox_id] = _failed(rows[event.inbox_id], exc)
        # Rules fire for every event the mirror took, before user handlers run: a handler that
        # fails has its event retried, and by then the mirror holds the change already.
        mirrored = [e for e in events if e.inbox_id not in outcomes]
        if self.dedupe_changes:
            copies |= _copies(connection, mirrored, before)
            mirrored = [e for e in mirrored if e.inbox_id not in copies]
        handled = self._fire(connection, mirrored, before, rows, outcomes)
        for event in mirrored:
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
                outcomes[event.inbox_id] = _failed(rows[event.inbox_id], exc)
                continue
            handled.add(event.inbox_id)
        for event in events:
            if event.inbox_id in outcomes:
                continue
            done = event.inbox_id in handled or event.inbox_id in copies or mirror.handles(event)
            outcomes[event.inbox_id] = _outcome(rows[event.inbox_id], "done" if done else "ignored")
        return [outcomes[row.id] for row in claimed]

    def _fire(
        self,
        connection: sa.Connection,
        events: list[Event],
        before: dict[int, Before],
        rows: dict[int, inbox.Claimed],
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
                outcomes[event.inbox_id] = _failed(rows[event.inbox_id], exc)
        return fired


def _copies(connection: sa.Connection, events: list[Event], before: dict[int, Before]) -> set[int]:
    """The applied events whose change another inbox row owns (events.change_key).

    Each change is claimed by its first event in the list, so a property change `before` found
    winning (the one whose rules may fire) goes first. Kind OTHER is no change: never a copy.
    """
    keyed = [e for e in events if e.kind is not Kind.OTHER and not e.is_self_test]
    keyed.sort(key=lambda e: not (e.inbox_id in before and before[e.inbox_id].wins))
    owners = changes.claim_first(
        connection, [(e.portal_id, change_key(e), e.occurred_at, e.inbox_id) for e in keyed]
    )
    return {e.inbox_id for e in keyed} - owners


def _normalised(claimed: list[inbox.Claimed], outcomes: dict[int, inbox.Outcome]) -> list[Event]:
    """The claimed rows as Events; a row that is not one has its outcome set here."""
    events: list[Event] = []
    for row in claimed:
        try:
            events.append(normalise(row.id, row.payload))
        except InvalidEvent as exc:
            # Not something HubSpot sends: kept with the reason, never applied or retried.
            outcomes[row.id] = _outcome(row, "ignored", f"invalid event: {exc}")
        except Exception as exc:  # noqa: BLE001 - a malformed row fails alone
            outcomes[row.id] = _failed(row, exc)
    return events


def _failed(row: inbox.Claimed, exc: BaseException) -> inbox.Outcome:
    detail = "".join(traceback.format_exception(exc))
    return _outcome(row, "failed", f"{type(exc).__name__}: {exc}\n{detail}"[:_ERROR_LIMIT])


def _outcome(row: inbox.Claimed, status: str, error: str | None = None) -> inbox.Outcome:
    """How applying the row ended, addressed to its partition (its id and occurred_at)."""
    return inbox.Outcome(row.id, row.occurred_at, status, error)
