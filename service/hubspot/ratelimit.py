"""A sliding-window rate limit per portal, shared through Postgres; sole writer of `rate_limits`.

HubSpot counts calls per app and account in a rolling 10-second window (HUBSPOT.md §4), and the
search API separately per second. Each (portal, bucket) row holds the start times of the calls
made in the current window; a call may start when fewer than `max_calls` started within the
window. Times come from the database clock, so workers on different machines agree.
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
            max_calls = min(int(row.max_calls), budget.max_calls)
            window = max(int(row.window_ms), budget.window_ms) + SAFETY_MARGIN_MS
            recent = [int(t) for t in row.calls if int(t) > now_ms - window]
            if len(recent) < max_calls:
                recent.append(now_ms)
                connection.execute(_STORE, {**params, "calls": recent})
                return 0
            connection.execute(_STORE, {**params, "calls": recent})
            return recent[-max_calls] + window - now_ms + 1

    def block(self, portal_id: int, bucket: str, seconds: float) -> None:
        """HubSpot said 429: nobody calls this bucket for `seconds`."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE rate_limits SET blocked_until_ms = greatest(blocked_until_ms,"
                    " (extract(epoch FROM clock_timestamp()) * 1000)::bigint + :ms)"
                    " WHERE portal_id = :portal_id AND bucket = :bucket"
                ),
                {"portal_id": portal_id, "bucket": bucket, "ms": int(seconds * 1000)},
            )
        log.warning("rate_limited", extra={"portal_id": portal_id, "bucket": bucket})

    def observe(self, portal_id: int, bucket: str, max_calls: int, window_ms: int) -> None:
        """Adopt HubSpot's advertised limit when it is stricter than the configured budget."""
        budget = self.budgets[bucket]
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE rate_limits SET max_calls = :max_calls, window_ms = :window_ms"
                    " WHERE portal_id = :portal_id AND bucket = :bucket"
                    " AND (max_calls, window_ms) IS DISTINCT FROM (:max_calls, :window_ms)"
                ),
                {
                    "portal_id": portal_id,
                    "bucket": bucket,
                    "max_calls": min(max_calls, budget.max_calls),
                    "window_ms": max(window_ms, budget.window_ms),
                },
            )
