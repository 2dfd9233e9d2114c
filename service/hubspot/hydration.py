"""Hydration: fetch the records the mirror asked for, 100 per call, and apply the snapshots.

Requests are leased, not held: a short transaction claims up to 100 due requests of one
(portal, object type) and pushes their next attempt past the lease; the batch read runs with no
transaction open; a second transaction applies the snapshots and deletes the requests that were
not asked for again meanwhile. A crash mid-way only delays the lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa

from service import fetches
from service.hubspot.client import HubSpotApi, HubSpotError, NoToken
from service.mirror.snapshots import Snapshot, apply_snapshots
from service.settings import DEFAULT_MIRROR_PROPERTIES

log = logging.getLogger(__name__)


_FALLBACK_PROPERTIES = ("hs_object_id", "createdate", "hs_lastmodifieddate")


def properties_for(
    connection: sa.Connection,
    portal_id: int,
    object_type: str,
    configured: Mapping[str, tuple[str, ...]],
) -> list[str]:
    """The configured (or default) properties plus every one seen in webhooks for the type."""
    base = configured.get(object_type) or DEFAULT_MIRROR_PROPERTIES.get(
        object_type, _FALLBACK_PROPERTIES
    )
    seen = connection.scalars(
        sa.text("SELECT property FROM seen_properties WHERE portal_id = :p AND object_type = :t"),
        {"p": portal_id, "t": object_type},
    ).all()
    return sorted({*base, *seen})


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


@dataclass
class Hydrator:
    """Fetches leased requests through the API client and applies them."""

    engine: sa.Engine
    api: HubSpotApi
    configured_properties: Mapping[str, tuple[str, ...]]
    max_attempts: int = 10
    # With `pipelined`, writing a fetched batch overlaps fetching the next: one background
    # thread writes, in order (the worker's loop and drain() use it).
    pipelined: bool = False
    _writer: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _writing: Future[None] | None = field(default=None, init=False, repr=False)

    def run_once(self) -> int:
        """Fetch one group of up to 100 records; returns how many were claimed.

        Pipelined, the records are written in the background while the caller fetches the
        next group, and the last write is waited for when nothing is left to claim.
        """
        with self.engine.begin() as connection:
            claimed = fetches.claim(connection)
            if claimed is not None:
                properties = properties_for(
                    connection, claimed.portal_id, claimed.object_type, self.configured_properties
                )
        if claimed is None:
            self.flush()
            return 0
        started = time.perf_counter()
        try:
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
            with self.engine.begin() as connection:
                fetches.fail(connection, claimed, str(exc), max_attempts=self.max_attempts)
            return len(claimed.ids)
        fetched_at_ms = int(time.time() * 1000)
        snapshots = [
            Snapshot(r.id, r.properties, r.updated_at_ms or fetched_at_ms) for r in records
        ]
        self.flush()  # one write at a time, in order; raises if the previous one failed
        if not self.pipelined:
            self._write(claimed, snapshots, missing, fetched_at_ms)
        else:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="hydrate-write")
            self._writing = self._writer.submit(
                self._write, claimed, snapshots, missing, fetched_at_ms
            )
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
        return len(claimed.ids)

    def _write(
        self,
        claimed: fetches.Claim,
        snapshots: list[Snapshot],
        missing: list[int],
        fetched_at_ms: int,
    ) -> None:
        with self.engine.begin() as connection:
            complete(connection, claimed, snapshots, missing, fetched_at_ms)

    def flush(self) -> None:
        """Wait for the background write; a failed write raises here (its lease then expires
        and the records are fetched again)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def close(self) -> None:
        """Finish the last write and stop the writer thread."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

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
