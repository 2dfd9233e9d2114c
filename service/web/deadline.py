"""One deadline per delivery: the webhook's storage gives its answer inside HubSpot's 5 s.

HubSpot counts a delivery as failed when the answer takes more than 5 s and sends it again later
(HUBSPOT.md §1), so a 503 after that is worth no more than no answer at all, and requests that
keep waiting on a struggling database only pile up. Each delivery therefore gets one deadline,
REQUEST_DEADLINE (3.5 s by default) from the start of its request, and every step of storing it
takes its time from what is left:

- the wait for a pooled connection: the pool's timeout is the time left, and when
  WAITING_PER_CONNECTION requests per pooled connection are already waiting, a new one is
  answered 503 at once instead of joining the queue;
- the statement: the connection's `statement_timeout` and `lock_timeout` are at most the time
  left, so Postgres itself cancels an insert that would outlive the deadline (a table locked by
  a migration, a slow disk) and the connection stays usable;
- the one retry, for a connection that broke (restart, failover), only while time is left, and
  never after a timeout, which would only wait a second time;
- the answer itself, as a last resort: when the database does not answer at all (a frozen host,
  a lost network), the request stops waiting at the deadline and answers 503; the attempt ends
  in the background and its connection returns to the pool when Postgres answers or gives up.

The pool (`DeliveryStore.pool`, also used by /readyz and the inbox notifier) opens connections in
the background, never on a request's time: `connect_timeout` bounds one attempt, and after
`reconnect_timeout` (the deadline) of failed attempts the pool gives up and the next request
starts a fresh one, so a database that comes back is found within a couple of seconds instead of
after psycopg_pool's backoff has grown to minutes. Connections the server closed while they sat
idle in the pool are noticed before use, without a round trip, and replaced.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
from functools import partial
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from service import db, inbox

log = logging.getLogger(__name__)

# Requests allowed to wait for a pooled connection, per connection: beyond that, 503 at once.
# With a healthy database a connection is back within milliseconds and the queue stays short;
# a queue this long means the database is not keeping up, and a waiter would only time out.
WAITING_PER_CONNECTION = 8
# The session's statement_timeout moves in steps of this size: deliveries arriving at the usual
# pace all find the value they need already set, so none pays a round trip to set it.
STEP_MS = 250
# The least time worth starting a statement with (or a retry after a broken connection). It
# is also the smallest statement_timeout set, so the statement that sets the next value is
# never itself cancelled by a leftover tiny one.
MIN_STATEMENT_MS = 50
# How long past the deadline the request waits for Postgres to report its own timeout, before
# it stops waiting for an answer at all.
GRACE_SECONDS = 0.1
APPLICATION_NAME = "hubspot-webhooks-web"

_SET_TIMEOUTS = (
    "SELECT set_config('statement_timeout', %(ms)s, false),"
    " set_config('lock_timeout', %(ms)s, false)"
)


class DeadlineExceeded(Exception):
    """The database did not answer before the request's deadline."""


# What Postgres and the pool raise when the time ran out: never retried.
_TIMEOUTS = (PoolTimeout, psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)


def cause(exc: BaseException) -> str:
    """Why a delivery was not stored, for the log: `deadline` (out of time), `busy` (too many
    deliveries waiting for a connection) or `unavailable` (the database failed)."""
    if isinstance(exc, (DeadlineExceeded, *_TIMEOUTS)):
        return "deadline"
    if isinstance(exc, TooManyRequests):
        return "busy"
    return "unavailable"


class DeliveryStore:
    """Records deliveries through the web process's connection pool, each inside its deadline."""

    def __init__(self, url: str, *, pool_size: int, deadline_seconds: float) -> None:
        self.seconds = deadline_seconds
        # Each pooled connection's statement_timeout and lock_timeout, in ms.
        self._timeouts: WeakKeyDictionary[psycopg.AsyncConnection[Any], int] = WeakKeyDictionary()
        # Attempts the request stopped waiting for: kept referenced until they end.
        self._abandoned: set[asyncio.Task[inbox.RecordResult]] = set()
        # A request reaches storage at least a millisecond after it started.
        initial_ms = _statement_ms(deadline_seconds - 0.001)

        async def configure(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.set_autocommit(True)
            self._timeouts[connection] = initial_ms

        self.pool: AsyncConnectionPool = AsyncConnectionPool(
            db.libpq_url(url),
            min_size=1,
            max_size=pool_size,
            name="web",
            timeout=deadline_seconds,
            max_waiting=WAITING_PER_CONNECTION * pool_size,
            reconnect_timeout=deadline_seconds,
            max_lifetime=1800,
            kwargs={
                # libpq's smallest connect timeout is 2 s; one attempt never outlasts a deadline.
                "connect_timeout": max(2, int(deadline_seconds)),
                "application_name": APPLICATION_NAME,
                "options": f"-c statement_timeout={initial_ms} -c lock_timeout={initial_ms}",
            },
            configure=configure,
            open=False,
        )

    async def record(
        self, batch: inbox.Batch, version: str, *, started: float
    ) -> inbox.RecordResult:
        """Store `batch` before the deadline of the request that began at `started`
        (time.perf_counter()). Raises what the pool or Postgres raised, or DeadlineExceeded."""
        deadline = started + self.seconds
        loop = asyncio.get_running_loop()
        attempt = loop.create_task(self._store(batch, version, deadline))
        # asyncio.wait's work, without its sets: one future released by the attempt's end or
        # by the timer, whichever comes first.
        waiter = loop.create_future()
        release = partial(_release, waiter)
        attempt.add_done_callback(release)
        left = deadline - time.perf_counter()
        timer = loop.call_later(max(0.0, left) + GRACE_SECONDS, release, None)
        try:
            await waiter
        finally:
            timer.cancel()
            attempt.remove_done_callback(release)
            if not attempt.done():
                # Cancelling would make psycopg wait for the server to confirm the cancel:
                # let the attempt end by itself instead.
                self._abandoned.add(attempt)
                attempt.add_done_callback(self._ended)
        if not attempt.done():
            raise DeadlineExceeded(f"no answer from the database within {self.seconds:g} s")
        return attempt.result()

    async def _store(self, batch: inbox.Batch, version: str, deadline: float) -> inbox.RecordResult:
        retried = False
        while True:
            try:
                return await self._attempt(batch, version, deadline)
            except psycopg.OperationalError as exc:
                if (
                    retried
                    or isinstance(exc, (*_TIMEOUTS, TooManyRequests))
                    or (deadline - time.perf_counter()) * 1000 < MIN_STATEMENT_MS
                ):
                    raise
                # The connection broke under the statement: another one may work, and repeating
                # is safe (ON CONFLICT stores nothing twice).
                log.info("webhook_store_retry", extra={"error": type(exc).__name__})
                retried = True

    async def _attempt(
        self, batch: inbox.Batch, version: str, deadline: float
    ) -> inbox.RecordResult:
        while True:
            left = deadline - time.perf_counter()
            async with self.pool.connection(timeout=left) as connection:
                if _closed_by_server(connection):
                    # Back to the pool, which discards it and connects a new one.
                    continue
                await self._limit(connection, deadline)
                return await inbox.record_delivery(connection, batch, signature_version=version)

    async def _limit(self, connection: psycopg.AsyncConnection[Any], deadline: float) -> None:
        """Make the connection's statement and lock timeouts fit in the time left."""
        ms = _statement_ms(deadline - time.perf_counter())
        if ms < MIN_STATEMENT_MS:
            raise DeadlineExceeded("too little time left to start the insert")
        if self._timeouts.get(connection) != ms:
            # A session setting rather than SET LOCAL: a transaction around the insert would
            # add round trips to every delivery, and this changes only when the time left does.
            await connection.execute(_SET_TIMEOUTS, {"ms": str(ms)})
            self._timeouts[connection] = ms

    def _ended(self, attempt: asyncio.Task[inbox.RecordResult]) -> None:
        self._abandoned.discard(attempt)
        if attempt.cancelled():
            return
        error = attempt.exception()
        if error is not None:
            log.warning("webhook_store_ended_late", extra={"error": type(error).__name__})
            return
        # Stored after its 503: HubSpot's retry finds it a duplicate; the workers' polling
        # finds the events.
        log.warning("webhook_store_ended_late", extra={"stored": attempt.result().stored})


def _release(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _statement_ms(left: float) -> int:
    """The statement and lock timeout for `left` seconds, rounded down to a step."""
    ms = int(left * 1000)
    if ms > STEP_MS:
        return ms - ms % STEP_MS
    return ms


def _closed_by_server(connection: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server closed this idle connection (a restart, a failover, an idle timeout),
    seen without a round trip: an idle connection's socket is readable only then (its last
    message, then the end of the stream) or for a notice."""
    pgconn = connection.pgconn
    poller = select.poll()  # not select.select: descriptors can be above 1024
    poller.register(pgconn.socket, select.POLLIN)
    # A few reads at most: the closing message, then the end of the stream.
    for _ in range(3):
        if pgconn.status != pq.ConnStatus.OK:
            return True
        if not poller.poll(0):
            return False
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            return True
    return pgconn.status != pq.ConnStatus.OK
