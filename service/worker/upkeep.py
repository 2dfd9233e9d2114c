"""Upkeep (stage 5): the alert loop, the scheduled reconcile's report, and pruning.

Every worker process runs the alert loop (`Alerts.step`, every ALERT_INTERVAL); for each condition
it locks the condition's row in alert_states, reads the facts, settles the row and enqueues the
messages of a change, all in one short transaction, so several workers send each transition
once (service/alerts.py). Delivery is the act stage's (service/alerting/messages.py), except for
`no_worker`, which is claimed the same way but delivered directly (service/alerting/direct.py).

The conditions, each read from Postgres:

- `dead_letters`: dead inbox events, action runs (alert runs aside: a dead alert must not alert
  about itself) or hydration requests; resolved when none is left.
- `lag`: the oldest due inbox event is older than ALERT_LAG.
- `no_worker`: no row of worker_heartbeats seen within `NO_WORKER_SECONDS`. The check reads the
  rows only, never "am I running": a worker's own heartbeat counts only once it is written, so a
  worker whose heartbeat is failing sees the fleet as dead. Web processes evaluate and send it
  too (service/alerting/direct.py), so a fleet that is entirely down is reported.
- `reinstall`: a portal's OAuth tokens stopped working.
- `rate_limited`: HubSpot answered 429 at least `RATE_LIMIT_429S` times within
  `RATE_LIMIT_WINDOW`, counted from the per-minute call counts (hubspot_api_call_minutes: the
  current minute and the ones before it that started inside the window); resolved after a
  whole window without one.
- `reconcile`: the last scheduled reconcile failed (`run_reconcile` reports each outcome).
- `journal`: the Webhooks Journal reader (HUBSPOT_EVENT_SOURCE journal or both) needs a look: a
  gap is open (the journal no longer held a window the reader had not read, and its reconcile
  has not completed), an entry read within INBOX_RETENTION failed to parse and was not replayed
  (`hubspot-webhooks journal replay --failed`), or the reader's last error is newer than its
  last success by more than ALERT_LAG; its last success is the last entry stored, or the last
  check that found it read to the end (so a quiet journal's one passing error does not fire).
  Its value holds the counts and the error's first line, URLs and tokens cut out. Resolved when
  all three are clear; push-only deployments have no journal rows and it never fires.

`keep_partitions` keeps the partitions (service/partitions.py) of the four tables that only
grow, each through its owner's scheme: the inbox (INBOX_RETENTION: done and ignored rows go with
their partition, pending, failed and dead rows are put back first), the action runs
(ACTION_RETENTION: done runs go, pending, failed and dead runs are put back), the per-minute
API call counts (API_LOG_RETENTION: everything goes, a whole day's partition at a time, instead
of a DELETE) and the applied changes (INBOX_RETENTION: everything goes). The next days'
partitions are created ahead. Each worker runs it every `PARTITIONS_SECONDS`; an advisory lock
per table lets one of them work on a table at a time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from service import alerts, changes, inbox, outbox, partitions
from service.alerting import direct
from service.alerting import messages as alert_messages
from service.hubspot.client import HubSpotApi, call_log_partitioning
from service.hubspot.reconcile import known_portals, reconcile_all
from service.settings import Settings

log = logging.getLogger(__name__)

NO_WORKER_SECONDS = direct.NO_WORKER_SECONDS
PARTITIONS_SECONDS = 600.0
RATE_LIMIT_429S = 10
RATE_LIMIT_WINDOW = 300.0

Check = Callable[[sa.Connection, alerts.State, Settings], tuple[bool, dict[str, Any]]]

_DEAD = sa.text(
    f"""
    SELECT (SELECT count(*) FROM inbox_events WHERE status = 'dead') AS inbox,
           (SELECT count(*) FROM action_runs WHERE status = 'dead'
              AND NOT (portal_id = {alert_messages.PORTAL}
                       AND rule LIKE '{alert_messages.RULE_PREFIX}%')) AS actions,
           (SELECT count(*) FROM hydration_requests WHERE status = 'dead') AS hydration
    """
)
_OLDEST_DUE = sa.text(
    """
    SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
    FROM inbox_events
    WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
    """
)
# On the minute index: a window is a handful of minutes, whatever the day holds.
_RECENT_429S = sa.text(
    """
    SELECT coalesce(sum(calls), 0) FROM hubspot_api_call_minutes
    WHERE minute > now() - make_interval(secs => :window) AND outcome = '429'
    """
)

_JOURNAL = sa.text(
    """
    SELECT (SELECT count(*) FROM journal_gaps WHERE reconciled_at IS NULL) AS gaps_open,
           (SELECT count(*) FROM journal_entries WHERE status = 'failed'
              AND fetched_at > now() - make_interval(secs => :retention)) AS failed_entries
    """
)
# The newest error of a reader failing for longer than ALERT_LAG since its last success.
_JOURNAL_FAILING = sa.text(
    """
    SELECT journal, last_error FROM journal_cursors
    WHERE last_error_at > coalesce(greatest(entry_at, CASE WHEN behind = 0 THEN checked_at END),
                                   '-infinity') + make_interval(secs => :lag)
    ORDER BY last_error_at DESC LIMIT 1
    """
)
_URL = re.compile(r"(https?://[^/\s?#]+)[^\s]*")
_BEARER = re.compile(r"(?i)\b(bearer|token|secret|signature)([\s=:]+)\S+")


def dead_letters(
    connection: sa.Connection, state: alerts.State, settings: Settings
) -> tuple[bool, dict[str, Any]]:
    """Dead rows of any queue are waiting for an operator."""
    counts = {k: int(v) for k, v in connection.execute(_DEAD).one()._mapping.items()}
    return sum(counts.values()) > 0, counts


def lag(
    connection: sa.Connection, state: alerts.State, settings: Settings
) -> tuple[bool, dict[str, Any]]:
    """The oldest due event has waited longer than ALERT_LAG."""
    oldest = float(connection.execute(_OLDEST_DUE).scalar_one())
    value = {"oldest_due_seconds": round(oldest), "threshold_seconds": settings.alert_lag_seconds}
    return oldest > settings.alert_lag_seconds, value


def reinstall(
    connection: sa.Connection, state: alerts.State, settings: Settings
) -> tuple[bool, dict[str, Any]]:
    """Portals whose OAuth tokens stopped working."""
    portals = list(
        connection.scalars(
            sa.text("SELECT portal_id FROM hubspot_tokens WHERE needs_reinstall ORDER BY 1")
        )
    )
    return bool(portals), {"portals": portals}


def rate_limited(
    connection: sa.Connection, state: alerts.State, settings: Settings
) -> tuple[bool, dict[str, Any]]:
    """HubSpot answered 429 at least RATE_LIMIT_429S times within RATE_LIMIT_WINDOW (once
    firing, until a whole window passes without one)."""
    count = int(connection.execute(_RECENT_429S, {"window": RATE_LIMIT_WINDOW}).scalar_one())
    firing = count > 0 if state.firing else count >= RATE_LIMIT_429S
    return firing, {"answers_429": count, "window_seconds": RATE_LIMIT_WINDOW}


def reconcile(
    connection: sa.Connection, state: alerts.State, settings: Settings
) -> tuple[bool, dict[str, Any]]:
    """The last scheduled reconcile failed."""
    report = state.report or {}
    return report.get("outcome") == "failed", {"report": report}


def journal(
    connection: sa.Connection, state: alerts.State, settings: Settings
) -> tuple[bool, dict[str, Any]]:
    """A journal gap is open, entries failed to parse, or the reader keeps failing."""
    params = {"retention": settings.inbox_retention_seconds}
    counts = {k: int(v) for k, v in connection.execute(_JOURNAL, params).one()._mapping.items()}
    failing = connection.execute(_JOURNAL_FAILING, {"lag": settings.alert_lag_seconds}).first()
    error = None if failing is None else f"{failing.journal}: {safe_line(failing.last_error)}"
    firing = counts["gaps_open"] > 0 or counts["failed_entries"] > 0 or failing is not None
    return firing, {**counts, "last_error": error}


def safe_line(error: str | None) -> str:
    """An error's first line for an alert: URLs cut to their host (a file URL's query is a
    signature), anything after `token`, `bearer`, `secret` or `signature` dropped, 200 chars."""
    line = (error or "").strip().partition("\n")[0]
    line = _URL.sub(r"\1/...", line)
    line = _BEARER.sub(r"\1\2...", line)
    return line[:200] or "unknown error"


CONDITIONS: dict[str, Check] = {
    "dead_letters": dead_letters,
    "lag": lag,
    "no_worker": direct.no_worker,
    "reinstall": reinstall,
    "rate_limited": rate_limited,
    "reconcile": reconcile,
    "journal": journal,
}


@dataclass
class Alerts:
    """The alert loop of one worker process."""

    engine: sa.Engine
    settings: Settings
    conditions: Sequence[str] = tuple(CONDITIONS)
    _steps: int = field(default=0, init=False)

    def step(self) -> int:
        """One round (the first is skipped, so this process's first heartbeat is written);
        returns 0: the loop waits ALERT_INTERVAL."""
        self._steps += 1
        if self._steps > 1:
            self.evaluate()
        return 0

    def evaluate(self) -> list[alerts.Message]:
        """Evaluate every condition once; the messages this process enqueued."""
        sent: list[alerts.Message] = []
        for key in self.conditions:
            if key == direct.KEY:  # claimed like the others, but delivered directly
                claimed = direct.evaluate(self.engine, self.settings)
                sent.extend([claimed] if claimed is not None else [])
                direct.send_pending(self.engine, self.settings)
                continue
            with self.engine.begin() as connection:
                state = alerts.lock(connection, key)
                if state is None:  # another worker is evaluating it right now
                    continue
                firing, value = CONDITIONS[key](connection, state, self.settings)
                message = alerts.settle(connection, state, firing=firing, value=value)
                if message is not None:
                    outbox.enqueue(connection, alert_messages.runs(message, self.settings))
                    sent.append(message)
            if message is not None:
                log.warning("alert_" + message.kind, extra={"alert": key, "number": message.number})
        return sent


def schemes(settings: Settings) -> list[partitions.Scheme]:
    """The partitioned tables and how each is kept, on the inbox's day boundaries."""
    width = inbox.PARTITION_SECONDS
    return [
        inbox.partitioning(settings.inbox_retention_seconds, width_seconds=width),
        outbox.partitioning(settings.action_retention_seconds, width_seconds=width),
        call_log_partitioning(settings.api_log_retention_seconds, width_seconds=width),
        # As long as the inbox rows the claims name (HUBSPOT_EVENT_SOURCE=both).
        changes.partitioning(settings.inbox_retention_seconds, width_seconds=width),
    ]


def keep_partitions(engine: sa.Engine, settings: Settings) -> int:
    """Create every partitioned table's partitions ahead and drop the expired ones; returns 0
    (the loop then waits PARTITIONS_SECONDS). A table another worker is keeping right now is
    skipped; one table failing does not keep the others from being kept (raised after)."""
    failed: Exception | None = None
    for scheme in schemes(settings):
        try:
            report = partitions.maintain(engine, scheme)
        except Exception as exc:  # noqa: BLE001 - the next tables still get their upkeep
            log.warning(
                "partitions_failed", extra={"table": scheme.table, "error": type(exc).__name__}
            )
            failed = failed or exc
            continue
        if report is not None and (
            report.created or report.dropped or report.busy or report.cleaned
        ):
            log.info(
                "partitions_kept",
                extra={
                    "table": scheme.table,
                    "partitions_created": report.created,
                    "partitions_dropped": report.dropped,
                    "rows_moved": report.moved,
                    "rows_kept": report.kept,
                    "rows_cleaned": report.cleaned,
                    "busy": report.busy,
                },
            )
    if failed is not None:
        raise failed
    return 0


def run_reconcile(engine: sa.Engine, api: HubSpotApi, settings: Settings) -> int:
    """The scheduled reconcile, its outcome reported for the `reconcile` alert; returns 0.

    A failure is reported by its type only (HubSpot's messages can quote values) and raised
    again, so the stage loop logs it and waits for the next interval.
    """
    try:
        done = reconcile_all(
            engine,
            api,
            portals=known_portals(engine),
            lookback_seconds=settings.reconcile_lookback_seconds,
            configured_properties=settings.mirror_properties,
        )
    except Exception as exc:
        with engine.begin() as connection:
            alerts.report(
                connection, "reconcile", {"outcome": "failed", "error": type(exc).__name__}
            )
        raise
    if done is not None:  # None: another worker ran it this time
        with engine.begin() as connection:
            alerts.report(connection, "reconcile", {"outcome": "ok"})
    return 0
