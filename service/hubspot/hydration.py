"""Hydration: fetch the records the mirror asked for, 100 per call, and apply the snapshots.

Requests are leased, not held: a short transaction claims up to 100 due requests of one
(portal, object type), with the properties webhooks mentioned for that type, and pushes their
next attempt past the lease; the batch read runs with no transaction open; a second transaction
applies the snapshots, deletes the requests that were not asked for again meanwhile and counts
the call (or records the failure). A crash mid-way only delays the lease.

Pipelined (the worker's hydrate stage and `drain`), the three overlap across batches: while
batch N's read is in flight, batch N-1 is applied and batch N+1 claimed (with its read's slot
in the rate limit: RateLimiter.reserve_ahead), each in a thread and on a connection of its own,
so a batch costs about the longest of the three rather than their sum.
Applying takes the database longer than a read takes HubSpot, so two batches may be applied at
once (WRITERS): they hold disjoint leases, so they touch disjoint records, and the apply locks
its records in key order like every writer of the mirror. Per API call that is three short
transactions (the rate limiter's reservation, the claim, the apply), none open across the call.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa

from service import fetches
from service.hubspot.client import CallCounts, HubSpotApi, HubSpotError, NoToken, record_calls
from service.mirror.snapshots import Snapshot, apply_snapshots
from service.settings import DEFAULT_MIRROR_PROPERTIES

log = logging.getLogger(__name__)


_FALLBACK_PROPERTIES = ("hs_object_id", "createdate", "hs_lastmodifieddate")
WRITERS = 2  # batches applied at once, pipelined
CLAIM_READS = 2  # batch reads leased per claim, pipelined
_NO_FLUSH_WAIT = sa.text("SET LOCAL synchronous_commit = off")


def wanted_properties(
    object_type: str, configured: Mapping[str, tuple[str, ...]], seen: Iterable[str]
) -> list[str]:
    """The configured (or default) properties of the type plus the ones seen in webhooks."""
    base = configured.get(object_type) or DEFAULT_MIRROR_PROPERTIES.get(
        object_type, _FALLBACK_PROPERTIES
    )
    return sorted({*base, *seen})


def properties_for(
    connection: sa.Connection,
    portal_id: int,
    object_type: str,
    configured: Mapping[str, tuple[str, ...]],
) -> list[str]:
    """The configured (or default) properties plus every one seen in webhooks for the type."""
    seen = connection.scalars(
        sa.text("SELECT property FROM seen_properties WHERE portal_id = :p AND object_type = :t"),
        {"p": portal_id, "t": object_type},
    ).all()
    return wanted_properties(object_type, configured, seen)


def complete(
    connection: sa.Connection,
    claimed: fetches.Claim,
    snapshots: Sequence[Snapshot],
    missing: Sequence[int],
    fetched_at_ms: int,
) -> None:
    """Apply the snapshots; drop the requests not asked for again since the claim."""
    apply_snapshots(
        connection,
        claimed.portal_id,
        claimed.object_type,
        snapshots,
        missing=missing,
        fetched_at_ms=fetched_at_ms,
    )
    fetches.complete(connection, claimed)


@dataclass(frozen=True, slots=True)
class _Read:
    """What one batch read gave: snapshots (None when it failed, with `error`), and the
    attempts it made, counted in the transaction that settles it."""

    claimed: fetches.Claim
    counts: CallCounts
    snapshots: list[Snapshot] | None
    missing: list[int] = field(default_factory=list)
    fetched_at_ms: int = 0
    error: str = ""


@dataclass
class Hydrator:
    """Fetches leased requests through the API client and applies them."""

    engine: sa.Engine
    api: HubSpotApi
    configured_properties: Mapping[str, tuple[str, ...]]
    max_attempts: int = 10
    # With `pipelined`, the next group is claimed and the last one written in background
    # threads while the caller fetches (the worker's loop and drain() use it).
    pipelined: bool = False
    _claimer: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _writer: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _next: Future[list[fetches.Claim]] | None = field(default=None, init=False, repr=False)
    _ready: deque[fetches.Claim] = field(default_factory=deque, init=False, repr=False)
    _reserving: Future[None] | None = field(default=None, init=False, repr=False)
    _writing: deque[Future[None]] = field(default_factory=deque, init=False, repr=False)

    def run_once(self) -> int:
        """Fetch one group of up to 100 records; returns how many were claimed.

        Pipelined, the next groups are claimed (CLAIM_READS at a time) and the next read's
        rate-limit slot taken during the read, and the records are written in the background
        while the caller fetches the next group; when nothing is left to claim, the last
        writes are waited for (they may make records due again) before saying 0.
        """
        if not self.pipelined:
            claims = self._claim(1)
            if not claims:
                return 0
            self._settle(self._read(claims[0]))
            return len(claims[0].ids)
        if not self._ready:
            claiming, self._next = self._next, None  # claimed during the previous read
            self._ready.extend(claiming.result() if claiming else self._claim(CLAIM_READS))
        if not self._ready:
            self.flush()  # the last writes may make records due again (asked for meanwhile)
            self._ready.extend(self._claim(CLAIM_READS))
            if not self._ready:
                self._hand_back()  # a slot reserved for a read that never came
                return 0
        claimed = self._ready.popleft()
        if self._claimer is None:
            self._claimer = ThreadPoolExecutor(2, thread_name_prefix="hydrate-claim")
        # While batch N is read: claim the next ones when none is left, and take the next
        # read's slot in the rate limit (most likely the same portal's; if not, that read
        # takes its own and this one is handed back).
        if not self._ready and self._next is None:
            self._next = self._claimer.submit(self._claim, CLAIM_READS)
        if self._reserving is None or self._reserving.done():
            self._reserving = self._claimer.submit(self._reserve_ahead, claimed.portal_id)
        read = self._read(claimed)
        while len(self._writing) >= WRITERS:  # raises if that write failed
            self._writing.popleft().result()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(WRITERS, thread_name_prefix="hydrate-write")
        self._writing.append(self._writer.submit(self._settle, read))
        return len(claimed.ids)

    def _claim(self, reads: int) -> list[fetches.Claim]:
        with self.engine.begin() as connection:
            return fetches.claim_reads(connection, reads)

    def _hand_back(self) -> None:
        """Wait for the slot being reserved ahead, then give back every unused one."""
        reserving, self._reserving = self._reserving, None
        if reserving is not None:
            reserving.result()  # never raises: _reserve_ahead logs its errors
        self.api.limiter.hand_back()

    def _reserve_ahead(self, portal_id: int) -> None:
        try:  # the bucket of CRM calls (HubSpotApi.call's default)
            self.api.limiter.reserve_ahead(portal_id, "api")
        except Exception as exc:  # noqa: BLE001 - then the read reserves its slot itself
            log.warning("reserve_ahead_failed", extra={"error": type(exc).__name__})

    def _read(self, claimed: fetches.Claim) -> _Read:
        """One batch read, no transaction open; a HubSpot error is returned, to be recorded."""
        counts: CallCounts = Counter()
        properties = wanted_properties(
            claimed.object_type, self.configured_properties, claimed.seen
        )
        started = time.perf_counter()
        try:
            with self.api.counting_into(counts):
                records, missing = self.api.batch_read(
                    claimed.portal_id, claimed.object_type, claimed.ids, properties
                )
        except HubSpotError as exc:
            level = logging.WARNING if isinstance(exc, NoToken) else logging.ERROR
            log.log(
                level,
                "hydration_failed",
                extra={
                    "portal_id": claimed.portal_id,
                    "object_type": claimed.object_type,
                    "records": len(claimed.ids),
                    "error": type(exc).__name__,
                },
            )
            return _Read(claimed, counts, None, error=str(exc))
        fetched_at_ms = int(time.time() * 1000)
        snapshots = [
            Snapshot(r.id, r.properties, r.updated_at_ms or fetched_at_ms) for r in records
        ]
        log.info(
            "hydrated",
            extra={
                "portal_id": claimed.portal_id,
                "object_type": claimed.object_type,
                "records": len(records),
                "missing": len(missing),
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return _Read(claimed, counts, snapshots, missing, fetched_at_ms)

    def _settle(self, read: _Read) -> None:
        """Apply a read (or record its failure) and count its calls, in one transaction."""
        with self.engine.begin() as connection:
            # No wait for the WAL flush: lost with a server crash, the apply goes with the
            # deletion of its requests, so the records are fetched again; and any later durable
            # commit (one that saw these rows) flushes this one too.
            connection.execute(_NO_FLUSH_WAIT)
            if read.snapshots is None:
                fetches.fail(connection, read.claimed, read.error, max_attempts=self.max_attempts)
            else:
                complete(connection, read.claimed, read.snapshots, read.missing, read.fetched_at_ms)
            record_calls(connection, read.counts)

    def flush(self) -> None:
        """Wait for the background writes; a failed write raises here (its lease then expires
        and the records are fetched again)."""
        while self._writing:
            self._writing.popleft().result()

    def close(self) -> None:
        """Finish the last write, give back a group claimed but not read, stop the threads."""
        try:
            self.flush()
            self._hand_back()
        finally:
            claiming, self._next = self._next, None
            try:
                unread = [*self._ready, *(claiming.result() if claiming is not None else [])]
                self._ready.clear()
                with self.engine.begin() as connection:
                    for claimed in unread:
                        fetches.release(connection, claimed)
            finally:
                for pool in (self._claimer, self._writer):
                    if pool is not None:
                        pool.shutdown()
                self._claimer = self._writer = None

    def drain(self) -> int:
        """Fetch until nothing is due (pipelined); returns the number of requests handled."""
        pipelined, self.pipelined = self.pipelined, True
        total = 0
        try:
            while count := self.run_once():
                total += count
        finally:
            self.pipelined = pipelined
            self.flush()
        return total
