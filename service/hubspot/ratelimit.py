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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

log = logging.getLogger(__name__)

# A little slack on top of the window: our clock starts when the call is reserved, HubSpot's
# when the request arrives, and the two drift by the network and queueing time in between.
SAFETY_MARGIN_MS = 250


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
    SELECT r.max_calls, r.window_ms, r.calls, r.blocked_until_ms, now.ms AS now_ms
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

    def acquire(self, portal_id: int, bucket: str) -> float:
        """Block until a call may start; returns the seconds waited."""
        waited = 0.0
        while True:
            wait_ms = self._reserve(portal_id, bucket)
            if wait_ms <= 0:
                return waited
            pause = wait_ms / 1000
            self.sleep(pause)
            waited += pause

    def _reserve(self, portal_id: int, bucket: str) -> int:
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
            if row.blocked_until_ms > now_ms:
                return int(row.blocked_until_ms - now_ms)
            # A row stored with 0 calls (before `observe` refused it) still lets one through.
            limits = {budget, Budget(max(1, int(row.max_calls)), int(row.window_ms))}
            longest = max(limit.window_ms for limit in limits) + SAFETY_MARGIN_MS
            recent = [int(t) for t in row.calls if int(t) > now_ms - longest]
            wait_ms = max(_wait_ms(recent, limit, now_ms) for limit in limits)
            if wait_ms <= 0:
                recent.append(now_ms)
            connection.execute(_STORE, {**params, "calls": recent})
            return wait_ms

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


def _wait_ms(recent: list[int], limit: Budget, now_ms: int) -> int:
    """How long until a call may start under `limit`, given the calls started (oldest first)."""
    window = limit.window_ms + SAFETY_MARGIN_MS
    inside = [t for t in recent if t > now_ms - window]
    if len(inside) < limit.max_calls:
        return 0
    return inside[-limit.max_calls] + window - now_ms + 1
