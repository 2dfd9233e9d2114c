"""A sliding-window rate limit per portal, shared through Postgres; sole writer of `rate_limits`.

HubSpot counts calls per app and account in a rolling 10-second window (HUBSPOT.md §4), and the
search API separately per second. Each (portal, bucket) row holds the start times of the calls
made in the current window; a call may start when fewer than `max_calls` started within the
window. Times come from the database clock, so workers on different machines agree.

The row starts with the configured budget; when HubSpot advertises its own limit in the
`X-HubSpot-RateLimit-*` headers (`observe`), the row holds that instead, unless it is looser
than the budget in both calls and window. A call then starts only when both the configured
budget and the row's limit allow it: over different windows (say 15 per 10 s configured, 10
per second advertised) neither alone is enough, and no single window is exactly both.

A reservation sits on every API call's path, so its transaction commits without waiting for
the WAL flush (`synchronous_commit = off` for it alone): other processes see it at once, as
with any commit; only a crash of the database server itself can forget the last fraction of a
second's reservations, which costs at most a 429 that `block` then handles.

A caller that knows it will call soon (the hydrator, claiming its next batch while the current
one is read) may `reserve_ahead`: the slot is taken and stored now, and the process's next
`acquire` of that bucket uses it without a transaction if it is at most HELD_MS old. Its stored
start then precedes the real one by at most HELD_MS, which the window's SAFETY_MARGIN_MS covers
(so every check still counts it); a slot held longer is handed back by the next reservation,
which removes it from the row, and `hand_back` returns the rest when the caller goes idle. Slots
are reserved ahead only while a tenth of the window (at least MAX_HELD) stays free, so a slot
held by a process about to go idle does not stand in the way of the window's last calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

log = logging.getLogger(__name__)

# A little slack on top of the window: our clock starts when the call is reserved, HubSpot's
# when the request arrives, and the two drift by the network and queueing time in between.
SAFETY_MARGIN_MS = 250
HELD_MS = 100  # how long a slot reserved ahead may wait for its call (< SAFETY_MARGIN_MS)
MAX_HELD = 2  # slots held ahead per (portal, bucket) at most


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `max_calls` calls started within any `window_ms`."""

    max_calls: int
    window_ms: int


_RESERVE = sa.text(
    """
    WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
    ensured AS (
        INSERT INTO rate_limits (portal_id, bucket, max_calls, window_ms)
        VALUES (:portal_id, :bucket, :max_calls, :window_ms)
        ON CONFLICT DO NOTHING
    )
    SELECT r.max_calls, r.window_ms, r.calls, r.blocked_until_ms, now.ms AS now_ms,
           -- Commit without waiting for the WAL flush (see the module's docstring).
           set_config('synchronous_commit', 'off', true) AS commit_mode
    FROM rate_limits r, now
    WHERE r.portal_id = :portal_id AND r.bucket = :bucket
    FOR UPDATE OF r
    """
)
_STORE = sa.text(
    "UPDATE rate_limits SET calls = :calls WHERE portal_id = :portal_id AND bucket = :bucket"
)


class RateLimiter:
    """Reserves call slots per (portal, bucket); several processes share one budget."""

    def __init__(
        self,
        engine: sa.Engine,
        budgets: dict[str, Budget],
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine = engine
        self.budgets = budgets
        self.sleep = sleep
        self._lock = threading.Lock()
        # Slots reserved ahead, oldest first: (portal, bucket) -> [(stored start in ms,
        # time.monotonic() when its transaction began)]; when this process last had a 429.
        self._held: dict[tuple[int, str], list[tuple[int, float]]] = {}
        self._blocked: dict[tuple[int, str], float] = {}

    def acquire(self, portal_id: int, bucket: str) -> float:
        """Block until a call may start; returns the seconds waited."""
        key = (portal_id, bucket)
        unused: list[int] = []
        with self._lock:
            held = self._held.get(key, [])
            blocked = self._blocked.get(key, float("-inf"))
            # A slot held too long, or taken before a 429 blocked the bucket, is handed back.
            while held:
                start, began = held.pop(0)
                if began > blocked and began > time.monotonic() - HELD_MS / 1000:
                    return 0.0
                unused.append(start)
        waited = 0.0
        while True:
            wait_ms, _ = self._reserve(portal_id, bucket, unused)
            unused = []
            if wait_ms <= 0:
                return waited
            pause = wait_ms / 1000
            self.sleep(pause)
            waited += pause

    def reserve_ahead(self, portal_id: int, bucket: str) -> bool:
        """Take a slot now for a call this process starts within HELD_MS, if one is free
        without waiting, with room to spare (and fewer than MAX_HELD are held); the next
        `acquire` uses it."""
        key = (portal_id, bucket)
        with self._lock:
            if len(self._held.get(key, [])) >= MAX_HELD:
                return False
        began = time.monotonic()
        wait_ms, now_ms = self._reserve(portal_id, bucket, [], ahead=True)
        if wait_ms > 0:
            return False
        with self._lock:
            self._held.setdefault(key, []).append((now_ms, began))
        return True

    def hand_back(self) -> None:
        """Give back every slot reserved ahead and not used (the caller has nothing to do)."""
        with self._lock:
            held, self._held = self._held, {}
        for (portal_id, bucket), slots in held.items():
            if slots:
                self._reserve(portal_id, bucket, [start for start, _ in slots], take=False)

    def _reserve(
        self,
        portal_id: int,
        bucket: str,
        unused: list[int],
        *,
        ahead: bool = False,
        take: bool = True,
    ) -> tuple[int, int]:
        """(ms to wait, the database's now); a slot is stored when the wait is 0 (and `take`).
        `unused`: starts of slots reserved ahead and never used, removed from the row first;
        `ahead`: only if a tenth of each window (at least MAX_HELD calls) stays free after."""
        budget = self.budgets[bucket]
        params = {
            "portal_id": portal_id,
            "bucket": bucket,
            "max_calls": budget.max_calls,
            "window_ms": budget.window_ms,
        }
        with self.engine.begin() as connection:
            row = connection.execute(_RESERVE, params).first()
            if row is None:  # the row was inserted by this very statement: read it again
                row = connection.execute(_RESERVE, params).one()
            now_ms = int(row.now_ms)
            calls = [int(t) for t in row.calls]
            for start in unused:
                if start in calls:
                    calls.remove(start)
            if row.blocked_until_ms > now_ms or not take:
                if unused:
                    connection.execute(_STORE, {**params, "calls": calls})
                return int(row.blocked_until_ms - now_ms), now_ms
            # A row stored with 0 calls (before `observe` refused it) still lets one through.
            limits = {budget, Budget(max(1, int(row.max_calls)), int(row.window_ms))}
            longest = max(limit.window_ms for limit in limits) + SAFETY_MARGIN_MS
            recent = [t for t in calls if t > now_ms - longest]
            if ahead:
                limits = {_with_room(limit) for limit in limits}
            wait_ms = max(_wait_ms(recent, limit, now_ms) for limit in limits)
            if wait_ms <= 0:
                recent.append(now_ms)
            connection.execute(_STORE, {**params, "calls": recent})
            return wait_ms, now_ms

    def block(self, portal_id: int, bucket: str, seconds: float) -> None:
        """HubSpot said 429: nobody calls this bucket for `seconds`."""
        budget = self.budgets[bucket]
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO rate_limits (portal_id, bucket, max_calls, window_ms,"
                    " blocked_until_ms) VALUES (:portal_id, :bucket, :max_calls, :window_ms,"
                    " (extract(epoch FROM clock_timestamp()) * 1000)::bigint + :ms)"
                    " ON CONFLICT (portal_id, bucket) DO UPDATE SET blocked_until_ms ="
                    " greatest(rate_limits.blocked_until_ms, excluded.blocked_until_ms)"
                ),
                {
                    "portal_id": portal_id,
                    "bucket": bucket,
                    "max_calls": budget.max_calls,
                    "window_ms": budget.window_ms,
                    "ms": int(seconds * 1000),
                },
            )
        with self._lock:
            self._blocked[(portal_id, bucket)] = time.monotonic()
        log.warning("rate_limited", extra={"portal_id": portal_id, "bucket": bucket})

    def observe(self, portal_id: int, bucket: str, max_calls: int, window_ms: int) -> None:
        """Keep HubSpot's advertised limit beside the configured budget (both are enforced),
        unless it is looser than the budget in both calls and window. A limit of no calls or
        no window is no limit anyone could keep: ignored."""
        if max_calls < 1 or window_ms < 1:
            return
        budget = self.budgets[bucket]
        if max_calls >= budget.max_calls and window_ms <= budget.window_ms:
            max_calls, window_ms = budget.max_calls, budget.window_ms
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO rate_limits (portal_id, bucket, max_calls, window_ms)"
                    " VALUES (:portal_id, :bucket, :max_calls, :window_ms)"
                    " ON CONFLICT (portal_id, bucket) DO UPDATE"
                    " SET max_calls = excluded.max_calls, window_ms = excluded.window_ms"
                    " WHERE (rate_limits.max_calls, rate_limits.window_ms)"
                    " IS DISTINCT FROM (excluded.max_calls, excluded.window_ms)"
                ),
                {
                    "portal_id": portal_id,
                    "bucket": bucket,
                    "max_calls": max_calls,
                    "window_ms": window_ms,
                },
            )


def _with_room(limit: Budget) -> Budget:
    """The limit less the room kept free when reserving ahead (no calls at all if that is
    everything: `_wait_ms` then always waits)."""
    room = max(MAX_HELD, limit.max_calls // 10)
    return Budget(max(0, limit.max_calls - room), limit.window_ms)


def _wait_ms(recent: list[int], limit: Budget, now_ms: int) -> int:
    """How long until a call may start under `limit`, given the calls started (oldest first)."""
    window = limit.window_ms + SAFETY_MARGIN_MS
    if limit.max_calls < 1:  # no call at all (all the room kept when reserving ahead)
        return window
    inside = [t for t in recent if t > now_ms - window]
    if len(inside) < limit.max_calls:
        return 0
    return inside[-limit.max_calls] + window - now_ms + 1
