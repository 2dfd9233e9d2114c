"""Time-range partitions of a queue table: created ahead of time, dropped when expired.

A `Scheme` names a table partitioned `BY RANGE` on a time key (epoch milliseconds or
timestamptz), the width of one partition, how many to keep ready ahead of the current one, the
retention, and the rows that must outlive their partition (for the inbox: pending, failed and
dead rows). `maintain` is the one entry point, run by the worker's upkeep stage; several
workers may call it at once, an advisory lock lets one of them work.

- **Ahead.** Every period from now minus the retention to `ahead` periods past the current one
  gets a partition, named by its start (`inbox_events_p20261130`). A row dated outside every
  partition lands in the DEFAULT partition (an insert never fails for want of one); creating the
  partition of its range moves it out of the default first (Postgres refuses the ATTACH
  otherwise), in the same transaction. The partition is created standalone and ATTACHed, which
  takes SHARE UPDATE EXCLUSIVE on the table (inserts go on) and ACCESS EXCLUSIVE on the default.
- **Expired.** A partition whose whole range is older than now minus the retention is DETACHed
  (ACCESS EXCLUSIVE on the table for a moment: DETACH CONCURRENTLY is not allowed beside a
  default partition) and marked; its rows matching `keep` go back in through the table, into
  the default partition (no partition covers their range any more), and the detached table is
  dropped. A run interrupted between the two finds the marked table next time and finishes it.
- **Default.** Its rows not kept whose range expired and that were stored longer ago than the
  retention are deleted, so it holds only the survivors and stray dates.

Every DDL statement runs with a short `lock_timeout` and is retried with jittered pauses, so a
long transaction on the table delays the upkeep, never the inserts queued behind its lock.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Literal

import psycopg
import sqlalchemy as sa

log = logging.getLogger(__name__)

# Advisory lock namespace (two-int4 form; the second key is the table's name hashed).
LOCK_NAMESPACE = 0x48_53_57_48_04 & 0x7FFFFFFF
DETACHED_MARK = "detached from {table} by retention"
LOCK_TIMEOUT_MS = 100
ATTEMPTS = 10

_BOUNDS = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


class NotPartitioned(Exception):
    """The table is not partitioned (its migration has not run)."""


class PartitionBusy(Exception):
    """A partition statement kept timing out on a lock held by other transactions."""


@dataclass(frozen=True, slots=True)
class Scheme:
    """How one table is partitioned and kept. Times are epoch milliseconds."""

    table: str
    key: str
    width_ms: int
    ahead: int
    retention_ms: int
    keep: str  # SQL condition: the rows that outlive their partition
    received: str | None = None  # when a row was stored (timestamptz), for the default's cleanup
    key_type: Literal["epoch_ms", "timestamptz"] = "epoch_ms"

    @property
    def default(self) -> str:
        """The DEFAULT partition's name."""
        return f"{self.table}_default"

    def literal(self, ms: int) -> str:
        """A key value as SQL (a constant, never input)."""
        if self.key_type == "timestamptz":
            return f"to_timestamp({ms} / 1000.0)"
        return str(int(ms))

    def name(self, start_ms: int) -> str:
        """A partition's name, from its start: `_p20261130`, with the time when not midnight."""
        start = datetime.fromtimestamp(start_ms / 1000, UTC)
        stamp = start.strftime("%Y%m%d")
        if start_ms % 86_400_000:
            stamp += start.strftime("_%H%M")
        if start_ms % 60_000:
            stamp += start.strftime("%S")
        if start_ms % 1000:
            stamp += f"{start_ms % 1000:03d}"
        return f"{self.table}_p{stamp}"


DAY_SECONDS = 86_400  # the queues' partition width: one day of their key
AHEAD = 3  # partitions kept ready beyond the current one


def daily(
    table: str,
    key: str,
    *,
    retention_seconds: float,
    keep: str,
    received: str | None = None,
    key_type: Literal["epoch_ms", "timestamptz"] = "epoch_ms",
    width_seconds: float = DAY_SECONDS,
) -> Scheme:
    """The queues' scheme: a partition per day of `key` (a benchmark passes a shorter width),
    AHEAD ready, dropped once older than the retention except the rows `keep` selects."""
    return Scheme(
        table=table,
        key=key,
        width_ms=int(width_seconds * 1000),
        ahead=AHEAD,
        retention_ms=int(retention_seconds * 1000),
        keep=keep,
        received=received,
        key_type=key_type,
    )


@dataclass(frozen=True, slots=True)
class Partition:
    """One attached range partition; None bounds are MINVALUE / MAXVALUE."""

    name: str
    lower: int | None
    upper: int | None


@dataclass
class Report:
    """What one `maintain` run did."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved: int = 0  # rows moved out of the default into a new partition
    kept: int = 0  # rows of dropped partitions put back (into the default)
    cleaned: int = 0  # expired rows deleted from the default
    busy: list[str] = field(default_factory=list)  # partitions left for the next run


def maintain(
    engine: sa.Engine,
    scheme: Scheme,
    *,
    now_ms: int | None = None,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> Report | None:
    """Create the partitions ahead, drop the expired ones and clean the default; None when
    another process is doing it right now. `now_ms` defaults to the database's clock."""
    with engine.connect() as lock:
        lock.execution_options(isolation_level="AUTOCOMMIT")
        held = lock.scalar(
            sa.text("SELECT pg_try_advisory_lock(:ns, hashtext(:table))"),
            {"ns": LOCK_NAMESPACE, "table": scheme.table},
        )
        if not held:
            return None
        try:
            now = now_ms if now_ms is not None else _database_ms(lock)
            ddl = _Ddl(engine, lock_timeout_ms, attempts, sleep)
            return _maintain(engine, scheme, now, ddl)
        finally:
            lock.execute(
                sa.text("SELECT pg_advisory_unlock(:ns, hashtext(:table))"),
                {"ns": LOCK_NAMESPACE, "table": scheme.table},
            )


def _maintain(engine: sa.Engine, scheme: Scheme, now: int, ddl: _Ddl) -> Report:
    report = Report()
    with engine.connect() as connection:
        if not is_partitioned(connection, scheme.table):
            raise NotPartitioned(
                f"{scheme.table} is not partitioned: run `hubspot-webhooks migrate`"
            )
        leftovers = detached(connection, scheme)
        existing = attached(connection, scheme)
        has_default = _exists(connection, scheme.default)
    for name in leftovers:  # a run stopped between detaching and dropping
        report.kept += _put_back_and_drop(engine, scheme, name)
        report.dropped.append(name)
    if not has_default:
        ddl.run(lambda c: c.execute(sa.text(_create_default(scheme))))
    cutoff = now - scheme.retention_ms
    for lower, upper in _missing(scheme, existing, now):
        name = scheme.name(lower)
        try:
            report.moved += ddl.run(partial(_create, scheme=scheme, name=name, span=(lower, upper)))
            report.created.append(name)
        except PartitionBusy:
            report.busy.append(name)
    expired = [p for p in existing if p.upper is not None and p.upper <= cutoff]
    for partition in sorted(expired, key=lambda p: p.upper or 0):
        try:
            ddl.run(partial(_detach, scheme=scheme, name=partition.name))
        except PartitionBusy:
            report.busy.append(partition.name)
            break  # the older ones first: try again next run
        report.kept += _put_back_and_drop(engine, scheme, partition.name)
        report.dropped.append(partition.name)
    report.cleaned = _clean_default(engine, scheme, now)
    return report


def is_partitioned(connection: sa.Connection, table: str) -> bool:
    """Whether `table` is a partitioned table (UndefinedTable when there is none: the worker's
    loops say "not migrated" once for that)."""
    return bool(
        connection.scalar(
            sa.text("SELECT relkind = 'p' FROM pg_class WHERE oid = CAST(:t AS regclass)"),
            {"t": table},
        )
    )


def attached(connection: sa.Connection, scheme: Scheme) -> list[Partition]:
    """The table's range partitions (not the default), oldest first."""
    with _utc(connection):
        rows = connection.execute(
            sa.text(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
            ),
            {"t": scheme.table},
        ).all()
    found = []
    for name, bound in rows:
        match = _BOUNDS.fullmatch(bound)
        if match is not None:  # else the DEFAULT partition
            lower, upper = (_bound(scheme, value) for value in match.groups())
            found.append(Partition(name, lower, upper))
    return sorted(found, key=lambda p: (p.lower is not None, p.lower or 0))


def detached(connection: sa.Connection, scheme: Scheme) -> list[str]:
    """Tables retention detached from `scheme.table` and has not dropped yet."""
    return list(
        connection.scalars(
            sa.text(
                "SELECT relname FROM pg_class WHERE relkind = 'r'"
                " AND relnamespace = current_schema()::regnamespace"
                " AND obj_description(oid, 'pg_class') = :mark ORDER BY relname"
            ),
            {"mark": DETACHED_MARK.format(table=scheme.table)},
        )
    )


def _missing(scheme: Scheme, existing: list[Partition], now: int) -> list[tuple[int, int]]:
    """The ranges of the periods from now minus the retention to `ahead` periods past the
    current one that no partition covers, clipped to the gaps between the existing ones."""
    width = scheme.width_ms
    first = max((now - scheme.retention_ms) // width, 0)
    last = now // width + scheme.ahead
    gaps = []
    for period in range(first, last + 1):
        start, end = period * width, (period + 1) * width
        if end <= now - scheme.retention_ms:
            continue
        for partition in existing:  # existing is sorted: clip from the left, stop on a gap
            low = partition.lower if partition.lower is not None else start
            high = partition.upper if partition.upper is not None else end
            if low <= start < high:
                start = high
            elif start < low < end:
                end = low
        if start < end:
            gaps.append((start, end))
    return gaps


def _create(connection: sa.Connection, *, scheme: Scheme, name: str, span: tuple[int, int]) -> int:
    """Create, fill from the default and attach one partition; returns the rows moved."""
    key, default = scheme.key, scheme.default
    low, high = scheme.literal(span[0]), scheme.literal(span[1])
    columns = _columns(connection, scheme.table)
    connection.execute(sa.text(f"LOCK TABLE {scheme.table} IN SHARE UPDATE EXCLUSIVE MODE"))
    connection.execute(
        sa.text(
            f"CREATE TABLE {name} (LIKE {scheme.table} INCLUDING CONSTRAINTS INCLUDING STORAGE)"
        )
    )
    # The ATTACH locks the default anyway, to scan it: taking it first means no row of this
    # range can land there between the move and the ATTACH.
    connection.execute(sa.text(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE"))
    moved = connection.execute(
        sa.text(
            f"WITH moved AS (DELETE FROM {default} WHERE {key} >= {low} AND {key} < {high}"
            f" RETURNING {columns}) INSERT INTO {name} ({columns}) SELECT * FROM moved"
        )
    ).rowcount
    # A proven check lets the ATTACH skip scanning the new table for rows out of range.
    bound = "ck_partition_bound"
    connection.execute(
        sa.text(
            f"ALTER TABLE {name} ADD CONSTRAINT {bound} CHECK ({key} >= {low} AND {key} < {high})"
        )
    )
    connection.execute(
        sa.text(
            f"ALTER TABLE {scheme.table} ATTACH PARTITION {name}"
            f" FOR VALUES FROM ({low}) TO ({high})"
        )
    )
    connection.execute(sa.text(f"ALTER TABLE {name} DROP CONSTRAINT {bound}"))
    return int(moved)


def _detach(connection: sa.Connection, *, scheme: Scheme, name: str) -> int:
    connection.execute(sa.text(f"ALTER TABLE {scheme.table} DETACH PARTITION {name}"))
    mark = DETACHED_MARK.format(table=scheme.table)
    connection.execute(sa.text(f"COMMENT ON TABLE {name} IS '{mark}'"))
    return 0


def _put_back_and_drop(engine: sa.Engine, scheme: Scheme, name: str) -> int:
    """Insert the detached table's kept rows through the table, then drop it; returns how many
    went back. Row locks only: inserts into the table go on meanwhile."""
    with engine.begin() as connection:
        columns = _columns(connection, scheme.table)
        kept = connection.execute(
            sa.text(
                f"INSERT INTO {scheme.table} ({columns}) SELECT {columns} FROM {name}"
                f" WHERE {scheme.keep} ON CONFLICT DO NOTHING"
            )
        ).rowcount
        connection.execute(sa.text(f"DROP TABLE {name}"))
    log.info("partition_dropped", extra={"table": scheme.table, "partition": name, "kept": kept})
    return int(kept)


def _clean_default(engine: sa.Engine, scheme: Scheme, now: int) -> int:
    cutoff = now - scheme.retention_ms
    stored_before = (
        f" AND {scheme.received} < to_timestamp({cutoff} / 1000.0)" if scheme.received else ""
    )
    with engine.begin() as connection:
        if not _exists(connection, scheme.default):
            return 0
        deleted = connection.execute(
            sa.text(
                f"DELETE FROM {scheme.default} WHERE NOT ({scheme.keep})"
                f" AND {scheme.key} < {scheme.literal(cutoff)}{stored_before}"
            )
        ).rowcount
    return int(deleted)


def _create_default(scheme: Scheme) -> str:
    return f"CREATE TABLE IF NOT EXISTS {scheme.default} PARTITION OF {scheme.table} DEFAULT"


class _Ddl:
    """Runs one transaction with a short lock_timeout, again after a jittered pause when a
    lock was not granted in time; PartitionBusy after the last attempt."""

    def __init__(
        self, engine: sa.Engine, timeout_ms: int, attempts: int, sleep: Callable[[float], None]
    ) -> None:
        self.engine, self.timeout_ms, self.attempts, self.sleep = (
            engine,
            timeout_ms,
            attempts,
            sleep,
        )

    def run(self, step: Callable[[sa.Connection], object]) -> int:
        for attempt in range(1, self.attempts + 1):
            try:
                with self.engine.begin() as connection:
                    connection.execute(sa.text(f"SET LOCAL lock_timeout = {int(self.timeout_ms)}"))
                    result = step(connection)
                return result if isinstance(result, int) else 0
            except sa.exc.OperationalError as exc:
                if not isinstance(exc.orig, psycopg.errors.LockNotAvailable):
                    raise
                if attempt == self.attempts:
                    break
                # Up to ten times the lock timeout: ingest waits at most one timeout per try.
                self.sleep(random.uniform(1, 10) * self.timeout_ms / 1000)  # noqa: S311 - jitter
        log.warning("partition_busy", extra={"attempts": self.attempts})
        raise PartitionBusy(f"no lock within {self.timeout_ms} ms, {self.attempts} times")


def _columns(connection: sa.Connection, table: str) -> str:
    names = connection.scalars(
        sa.text(
            "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = to_regclass(:t)"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
        {"t": table},
    )
    return ", ".join(names)


def _exists(connection: sa.Connection, table: str) -> bool:
    return connection.scalar(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}) is True


def _database_ms(connection: sa.Connection) -> int:
    return int(connection.scalar(sa.text("SELECT (extract(epoch FROM now()) * 1000)::bigint")))


@contextmanager
def _utc(connection: sa.Connection) -> Iterator[None]:
    """Bounds of timestamptz keys print in the session's time zone: read them in UTC (in a
    savepoint, so the settings end with it)."""
    with connection.begin_nested():
        connection.execute(sa.text("SET LOCAL TimeZone = 'UTC'"))
        connection.execute(sa.text("SET LOCAL DateStyle = 'ISO'"))
        yield


def _bound(scheme: Scheme, value: str) -> int | None:
    if value in ("MINVALUE", "MAXVALUE"):
        return None
    text = value.strip("'")
    if scheme.key_type == "timestamptz":
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    return int(text)
