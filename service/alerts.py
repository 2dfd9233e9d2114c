"""Alert state: every statement on alert_states lives here.

One row per alert condition (`dead_letters`, `lag`, ...): whether it is `firing` or `ok`, since
when, when its last message went out, how many messages it has had (the number of the next one
names it in the outbox), the value last evaluated, and what a stage last reported (the scheduled
reconcile writes its outcome here for the alert loop to read).

Several workers evaluate the same conditions. Each evaluation locks the condition's row with
`FOR UPDATE SKIP LOCKED` (a row another worker is evaluating is simply skipped this round),
reads the facts, and settles: a change of status or a reminder due is claimed by the UPDATE in
that same short transaction, together with the messages the caller enqueues, so a transition is
sent once however many workers saw it. Times are the database's (`now()`), never a process's.

A condition delivered directly (`no_worker`, which must go out when no worker runs the outbox)
keeps its undelivered messages in the row's `pending` list: `hold` adds them in the transaction
that claims the change, `lease` hands them to one sender for a while (no transaction is open
while it sends), and `delivered` removes what went out and ends the lease.
Functions take a connection and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

# While a condition keeps firing, a reminder goes out at most this often.
REMIND_SECONDS = 3600.0

Kind = Literal["firing", "resolved", "reminder"]


@dataclass(frozen=True, slots=True)
class State:
    """A condition's row as locked for one evaluation."""

    key: str
    status: str  # ok | firing
    since: datetime
    last_sent_at: datetime | None
    messages: int
    value: dict[str, Any]
    report: dict[str, Any] | None
    remind_due: bool  # firing, and the last message is older than REMIND_SECONDS

    @property
    def firing(self) -> bool:
        """Whether the condition was firing before this evaluation."""
        return self.status == "firing"


@dataclass(frozen=True, slots=True)
class Message:
    """A message to send: the condition, what happened, and its number (unique per key)."""

    key: str
    kind: Kind
    number: int
    since: datetime  # when the condition started firing (or resolved)
    value: dict[str, Any]


_ENSURE = sa.text("INSERT INTO alert_states (key) VALUES (:key) ON CONFLICT (key) DO NOTHING")
_LOCK = sa.text(
    """
    SELECT key, status, since, last_sent_at, messages, value, report,
           status = 'firing' AND (last_sent_at IS NULL
               OR last_sent_at <= now() - make_interval(secs => :remind)) AS remind_due
    FROM alert_states WHERE key = :key
    FOR UPDATE SKIP LOCKED
    """
)


def lock(connection: sa.Connection, key: str) -> State | None:
    """Lock the condition's row (created on first use); None when another worker holds it."""
    connection.execute(_ENSURE, {"key": key})
    row = connection.execute(_LOCK, {"key": key, "remind": REMIND_SECONDS}).first()
    return None if row is None else State(**row._mapping)


_SETTLE = sa.text(
    """
    UPDATE alert_states
    SET status = :status,
        since = CASE WHEN :changed THEN now() ELSE since END,
        last_sent_at = CASE WHEN :send THEN now() ELSE last_sent_at END,
        messages = messages + CASE WHEN :send THEN 1 ELSE 0 END,
        value = CAST(:value AS jsonb),
        updated_at = now()
    WHERE key = :key AND status = :was
    RETURNING since, messages
    """
)


def settle(
    connection: sa.Connection, state: State, *, firing: bool, value: dict[str, Any]
) -> Message | None:
    """Record this evaluation; the message to send when it started, resolved or needs a
    reminder, else None. `state` must be locked by this transaction (`lock`)."""
    kind: Kind | None = None
    if firing and not state.firing:
        kind = "firing"
    elif state.firing and not firing:
        kind = "resolved"
    elif firing and state.remind_due:
        kind = "reminder"
    row = connection.execute(
        _SETTLE,
        {
            "key": state.key,
            "was": state.status,
            "status": "firing" if firing else "ok",
            "changed": firing != state.firing,
            "send": kind is not None,
            "value": json.dumps(value, default=str),
        },
    ).first()
    if row is None or kind is None:  # `was` no longer holds: someone else settled it
        return None
    return Message(state.key, kind, int(row.messages), row.since, value)


def hold(connection: sa.Connection, key: str, entries: list[dict[str, Any]]) -> None:
    """Add messages to send directly to the condition's `pending` list (not yet delivered)."""
    connection.execute(
        sa.text(
            "UPDATE alert_states SET pending = pending || CAST(:entries AS jsonb) WHERE key = :key"
        ),
        {"key": key, "entries": json.dumps(entries, default=str)},
    )


def lease(connection: sa.Connection, key: str, seconds: float) -> list[dict[str, Any]]:
    """The condition's pending messages, leased to the caller for `seconds` (commit before
    sending); [] when there are none or another sender holds the lease."""
    row = connection.execute(
        sa.text(
            "UPDATE alert_states SET pending_until = now() + make_interval(secs => :seconds)"
            " WHERE key = :key AND pending <> '[]'::jsonb"
            " AND (pending_until IS NULL OR pending_until <= now())"
            " RETURNING pending"
        ),
        {"key": key, "seconds": seconds},
    ).first()
    return [] if row is None else list(row.pending)


def delivered(connection: sa.Connection, key: str, done: list[dict[str, Any]]) -> None:
    """Remove the messages in `done` (delivered, or never deliverable) and end the lease."""
    row = connection.execute(
        sa.text("SELECT pending FROM alert_states WHERE key = :key FOR UPDATE"), {"key": key}
    ).first()
    if row is None:
        return
    left = [entry for entry in row.pending if entry not in done]
    connection.execute(
        sa.text(
            "UPDATE alert_states SET pending = CAST(:left AS jsonb), pending_until = NULL"
            " WHERE key = :key"
        ),
        {"key": key, "left": json.dumps(left, default=str)},
    )


def report(connection: sa.Connection, key: str, outcome: dict[str, Any]) -> None:
    """A stage's latest outcome for the condition `key` (the alert loop reads it)."""
    connection.execute(
        sa.text(
            "INSERT INTO alert_states (key, report) VALUES (:key, CAST(:report AS jsonb))"
            " ON CONFLICT (key) DO UPDATE SET report = excluded.report"
        ),
        {"key": key, "report": json.dumps(outcome, default=str)},
    )
