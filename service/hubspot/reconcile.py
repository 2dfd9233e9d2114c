"""Reconcile: pull every record modified since a time through the search API, and upsert it.

HubSpot retries a webhook for 24 hours only (HUBSPOT.md §3); after a longer outage the mirror
heals from here. The search API returns at most 10,000 results per query, so the filter is
re-anchored on the last modification time seen (HUBSPOT.md §4), and a checkpoint records how far
a run got so an interrupted run resumes there. Records apply with the same last-writer-wins rule
as webhooks, versioned by their last modification time.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import sqlalchemy as sa

from service.db import utcnow
from service.hubspot.client import HubSpotApi, Record, last_modified_property, ms_of
from service.hubspot.hydration import properties_for
from service.mirror.snapshots import Snapshot, apply_snapshots

log = logging.getLogger(__name__)

SEARCH_PAGE = 200
SEARCH_CAP = 10_000
RECONCILE_LOCK = 0x48_53_57_48_03
OBJECT_TYPES = ("contacts", "companies", "deals")


@dataclass
class Summary:
    """What a reconcile run did."""

    portal_id: int
    object_type: str
    since_ms: int
    pages: int = 0
    records: int = 0
    changed: int = 0
    api_calls: int = 0
    seconds: float = 0.0
    resumed: bool = False

    def line(self) -> str:
        """One human-readable line."""
        resumed = " (resumed)" if self.resumed else ""
        return (
            f"reconciled {self.object_type} of portal {self.portal_id}{resumed}: "
            f"{self.pages} pages, {self.records} records, {self.changed} changed, "
            f"{self.api_calls} API calls, {self.seconds:.1f} s"
        )


@dataclass
class Progress:
    """A progress bar on a terminal, plain progress lines otherwise."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    every_pages: int = 10

    def update(self, summary: Summary, total: int) -> None:
        """Report after each page."""
        if self.stream.isatty():
            width = 30
            done = min(summary.records, total) if total else summary.records
            filled = int(width * done / total) if total else width
            self.stream.write(
                f"\r{summary.object_type:<10} [{'#' * filled}{'.' * (width - filled)}] "
                f"{summary.records} records, {summary.changed} changed"
            )
            self.stream.flush()
        elif summary.pages % self.every_pages == 1 or self.every_pages == 1:
            print(
                f"reconcile {summary.object_type}: page {summary.pages}, "
                f"{summary.records} records, {summary.changed} changed",
                file=self.stream,
            )

    def finish(self) -> None:
        """End the bar's line."""
        if self.stream.isatty():
            self.stream.write("\n")


def _ms_of(record: Record, prop: str) -> int:
    """The record's last modification time: its last-modified property, else `updatedAt`."""
    value = record.properties.get(prop)
    if isinstance(value, str) and value:
        try:
            return ms_of(value)
        except ValueError:
            log.warning("reconcile_unreadable_time", extra={"property": prop})
    return record.updated_at_ms


def _checkpoint(connection: sa.Connection, portal_id: int, object_type: str) -> Any:
    return connection.execute(
        sa.text(
            "SELECT * FROM reconcile_checkpoints WHERE portal_id = :p AND object_type = :t"
            " FOR UPDATE"
        ),
        {"p": portal_id, "t": object_type},
    ).first()


def reconcile(
    engine: sa.Engine,
    api: HubSpotApi,
    *,
    portal_id: int,
    object_type: str,
    since_ms: int | None = None,
    lookback_seconds: float = 3600.0,
    configured_properties: Mapping[str, tuple[str, ...]] | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Pull and upsert every record of one type modified since `since_ms` (or the default)."""
    started = time.perf_counter()
    prop = last_modified_property(object_type)
    with engine.begin() as connection:
        row = _checkpoint(connection, portal_id, object_type)
        resumed = False
        if since_ms is None and row is not None and row.run_started_at is not None:
            since_ms, resumed = int(row.cursor_ms), True  # an interrupted run: go on from there
        elif since_ms is None and row is not None and row.last_success_at is not None:
            since_ms = int(row.last_success_at.timestamp() * 1000 - lookback_seconds * 1000)
        elif since_ms is None:
            since_ms = 0  # never reconciled: everything
        run_started = row.run_started_at if resumed else utcnow()
        connection.execute(
            sa.text(
                """
                INSERT INTO reconcile_checkpoints
                    (portal_id, object_type, cursor_ms, run_started_at, run_since_ms)
                VALUES (:p, :t, :c, :r, :s)
                ON CONFLICT (portal_id, object_type) DO UPDATE
                SET cursor_ms = :c, run_started_at = :r,
                    run_since_ms = coalesce(reconcile_checkpoints.run_since_ms, :s),
                    updated_at = now()
                """
            ),
            {"p": portal_id, "t": object_type, "c": since_ms, "r": run_started, "s": since_ms},
        )
        properties = properties_for(connection, portal_id, object_type, configured_properties or {})
    summary = Summary(
        portal_id=portal_id, object_type=object_type, since_ms=since_ms, resumed=resumed
    )
    anchor, after = since_ms, None
    total = 0
    while True:
        page = api.search_modified_since(
            portal_id,
            object_type,
            since_ms=anchor,
            properties=properties,
            after=after,
            limit=SEARCH_PAGE,
        )
        summary.pages += 1
        summary.api_calls += 1
        summary.records += len(page.records)
        last_ms = anchor
        if page.records:
            snapshots = [Snapshot(r.id, r.properties, _ms_of(r, prop)) for r in page.records]
            last_ms = max(s.updated_at_ms for s in snapshots)
            with engine.begin() as connection:
                summary.changed += apply_snapshots(connection, portal_id, object_type, snapshots)
                connection.execute(
                    sa.text(
                        "UPDATE reconcile_checkpoints SET cursor_ms = greatest(cursor_ms, :c),"
                        " updated_at = now() WHERE portal_id = :p AND object_type = :t"
                    ),
                    # Everything modified before the page's last time has been read.
                    {"p": portal_id, "t": object_type, "c": last_ms},
                )
        if summary.pages == 1:
            total = page.total  # later queries start further on and count only the rest
        if progress is not None:
            progress.update(summary, total)
        if page.after is None:
            break
        if last_ms > anchor:
            # Keyset paging: the next query starts at the last time read. Offsets (`after`)
            # shift when a record is edited mid-run and moves to the end, skipping another.
            anchor, after = last_ms, None
        elif int(page.after) + SEARCH_PAGE > SEARCH_CAP:
            # More than 10,000 records modified in one millisecond: the search API cannot page
            # past its cap within one query, so the rest of that millisecond is skipped.
            log.warning(
                "reconcile_skipped_crowded_millisecond",
                extra={"portal_id": portal_id, "object_type": object_type, "ms": anchor},
            )
            anchor, after = anchor + 1, None
        else:
            after = page.after
    if progress is not None:
        progress.finish()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                """
                UPDATE reconcile_checkpoints
                SET last_success_at = run_started_at, last_success_since_ms = run_since_ms,
                    run_started_at = NULL, run_since_ms = NULL, updated_at = now()
                WHERE portal_id = :p AND object_type = :t
                """
            ),
            {"p": portal_id, "t": object_type},
        )
    summary.seconds = time.perf_counter() - started
    log.info(
        "reconciled",
        extra={
            "portal_id": portal_id,
            "object_type": object_type,
            "pages": summary.pages,
            "records": summary.records,
            "changed": summary.changed,
        },
    )
    return summary


def known_portals(engine: sa.Engine) -> list[int]:
    """Portals this service has heard of: OAuth installs and portals in the mirror, paused
    portals aside (service/portals.py)."""
    with engine.connect() as connection:
        return list(
            connection.scalars(
                sa.text(
                    "SELECT portal_id FROM hubspot_tokens WHERE NOT needs_reinstall"
                    " UNION SELECT DISTINCT portal_id FROM crm_objects"
                    " EXCEPT SELECT portal_id FROM portal_controls WHERE paused_at IS NOT NULL"
                    " ORDER BY 1"
                )
            )
        )


def reconcile_all(
    engine: sa.Engine,
    api: HubSpotApi,
    *,
    portals: Sequence[int],
    object_types: Sequence[str] = OBJECT_TYPES,
    lookback_seconds: float = 3600.0,
    configured_properties: Mapping[str, tuple[str, ...]] | None = None,
) -> list[Summary] | None:
    """The scheduled run: every portal and type, one runner at a time (None: another runs)."""
    with engine.connect() as lock:
        lock.execution_options(isolation_level="AUTOCOMMIT")
        if not lock.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": RECONCILE_LOCK}):
            return None
        try:
            return [
                reconcile(
                    engine,
                    api,
                    portal_id=portal,
                    object_type=object_type,
                    lookback_seconds=lookback_seconds,
                    configured_properties=configured_properties,
                )
                for portal in portals
                for object_type in object_types
            ]
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": RECONCILE_LOCK})
