"""The /metrics gauges read from Postgres at scrape time: the queues, the workers, HubSpot's API.

The worker has no port, so what it does is read back from the tables it writes, through the web
service; every web process reads the same rows, so several of them report the same values.
Each query is bounded by an index (see migrations 0005 and bench/metrics_scrape.py): counts run
over partial indexes of the rows not done, which stay few however large the inbox grows; the
done rows, the bulk, are counted exactly while the table is small and estimated from the
planner's statistics above `EXACT_COUNT_BELOW` rows; the apply lag reads the newest processed
rows from an index alone; the recent API calls read the last few minutes of the per-minute
counts (hubspot_api_call_minutes, a day of rows) through its index on `minute`. The tables keyed
by portal (rate limits, tokens, API call totals, paused portals) and the heartbeats hold a
handful of rows and are read whole. The Webhooks Journal's gauges (HUBSPOT_EVENT_SOURCE
journal or both) appear only once a reader has a cursor: its cursors and gaps are a handful of
rows, read whole; its entries (one row per file, not per event; stored ones are deleted after
INBOX_RETENTION) are counted by status like the queues: the failed ones exactly, the stored ones
exactly while the table is small and from its size estimate above `EXACT_COUNT_BELOW` rows (with
one journal; several journals' rows are counted). If the database does not answer, only
`hubspot_webhooks_database_up 0` is reported and the scrape still succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service import heartbeats

log = logging.getLogger(__name__)

PREFIX = "hubspot_webhooks_"
# Above this many rows (by the planner's estimate) `done` rows are estimated, not counted.
EXACT_COUNT_BELOW = 100_000
# The apply lag is taken over the rows processed in this window, newest first, at most LAG_SAMPLE.
LAG_WINDOW_SECONDS = 300
LAG_SAMPLE = 10_000
# Recent API calls: the minutes that started within this window (the current one and 4 before).
RECENT_CALLS_SECONDS = 300
SCRAPE_TIMEOUT_MS = 2_000

INBOX_STATUSES = ("pending", "failed", "dead", "ignored", "done")
RUN_STATUSES = ("pending", "failed", "dead", "done")

# Rows by status, the done rows aside; the table's size estimate from its statistics, scaled to
# its current number of pages as the planner does, summed over its partitions (a partitioned
# table has no pages of its own); -1 when a partition holding pages has no statistics yet.
_OPEN = "SELECT status, count(*) FROM {table} WHERE status <> 'done' GROUP BY status"
_ESTIMATE = sa.text(
    """
    SELECT CASE WHEN bool_or(pg_relation_size(c.oid) > 0 AND (c.reltuples < 0 OR c.relpages = 0))
                     OR NOT bool_or(pg_relation_size(c.oid) > 0) THEN -1
                ELSE sum(CASE WHEN c.relpages = 0 THEN 0
                              ELSE c.reltuples / c.relpages * (pg_relation_size(c.oid)
                                   / current_setting('block_size')::float8) END) END
    FROM pg_class c
    WHERE (c.oid = CAST(:table AS regclass) AND c.relkind = 'r')
       OR c.oid IN (SELECT relid FROM pg_partition_tree(CAST(:table AS regclass)) WHERE isleaf)
    """
)
_DONE = "SELECT count(*) FROM {table} WHERE status = 'done'"
_OLDEST_DUE = sa.text(
    """
    SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
    FROM inbox_events
    WHERE status IN ('pending', 'failed') AND next_attempt_at <= now()
    """
)
_APPLY_LAG = sa.text(
    f"""
    SELECT count(*) AS events,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99
    FROM (
        SELECT extract(epoch FROM processed_at - received_at) AS lag
        FROM inbox_events
        WHERE processed_at IS NOT NULL
          AND processed_at > now() - make_interval(secs => {LAG_WINDOW_SECONDS})
        ORDER BY processed_at DESC
        LIMIT {LAG_SAMPLE}
    ) recent
    """
)
_HYDRATION = sa.text(
    """
    SELECT 'pending' AS status, count(*) AS n FROM hydration_requests WHERE status = 'pending'
    UNION ALL
    SELECT 'dead', count(*) FROM hydration_requests WHERE status = 'dead'
    """
)
_API_CALLS = sa.text(
    """
    SELECT endpoint, outcome, sum(calls) AS calls,
           extract(epoch FROM now() - max(last_at)) AS age
    FROM hubspot_api_calls GROUP BY endpoint, outcome ORDER BY endpoint, outcome
    """
)
_API_CALLS_RECENT = sa.text(
    f"""
    SELECT endpoint, outcome, sum(calls) AS calls
    FROM hubspot_api_call_minutes
    WHERE minute > now() - make_interval(secs => {RECENT_CALLS_SECONDS})
    GROUP BY endpoint, outcome ORDER BY endpoint, outcome
    """
)
_RATE_LIMITS = sa.text(
    """
    WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
    SELECT r.portal_id, r.bucket,
           CASE WHEN r.blocked_until_ms > now.ms THEN 0
                ELSE greatest(0, r.max_calls - (SELECT count(*) FROM unnest(r.calls) AS t
                                                WHERE t > now.ms - r.window_ms)) END AS remaining,
           greatest(0, r.blocked_until_ms - now.ms) / 1000.0 AS blocked_seconds
    FROM rate_limits r, now
    ORDER BY r.portal_id, r.bucket
    """
)
_REINSTALL = sa.text("SELECT count(*) FROM hubspot_tokens WHERE needs_reinstall")
_PAUSED = sa.text("SELECT count(*) FROM portal_controls WHERE paused_at IS NOT NULL")
_JOURNAL_CURSORS = sa.text(
    """
    SELECT journal, behind, errors, extract(epoch FROM now() - entry_at) AS entry_age
    FROM journal_cursors ORDER BY journal
    """
)
_JOURNAL_FAILED = sa.text(
    "SELECT journal, count(*) AS n FROM journal_entries WHERE status = 'failed' GROUP BY journal"
)
_JOURNAL_STORED = sa.text(
    "SELECT journal, count(*) AS n FROM journal_entries WHERE status = 'stored' GROUP BY journal"
)
_JOURNAL_GAPS = sa.text(
    "SELECT journal, count(*) AS n FROM journal_gaps WHERE reconciled_at IS NULL GROUP BY journal"
)


class DatabaseCollector(Collector):
    """Reads the gauges from Postgres on every scrape, in one short read-only transaction."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The families of one scrape (prometheus_client calls this on each GET /metrics)."""
        started = time.perf_counter()
        up = GaugeMetricFamily(
            PREFIX + "database_up", "1 when the database answered this scrape's queries, else 0"
        )
        try:
            families = self.read()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics_database_unavailable", extra={"error": type(exc).__name__})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        took = GaugeMetricFamily(
            PREFIX + "scrape_database_seconds", "How long this scrape's database queries took"
        )
        took.add_metric([], time.perf_counter() - started)
        yield took

    def read(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        """Run every query; raises SQLAlchemyError when the database does not answer."""
        with self.engine.connect() as connection, connection.begin():
            connection.execute(sa.text("SET TRANSACTION READ ONLY"))
            connection.execute(sa.text(f"SET LOCAL statement_timeout = {SCRAPE_TIMEOUT_MS}"))
            inbox = _by_status(connection, "inbox_events", INBOX_STATUSES)
            runs = _by_status(connection, "action_runs", RUN_STATUSES)
            hydration = {r.status: int(r.n) for r in connection.execute(_HYDRATION)}
            oldest_due = float(connection.execute(_OLDEST_DUE).scalar_one())
            lag = connection.execute(_APPLY_LAG).one()
            calls = list(connection.execute(_API_CALLS))
            recent = list(connection.execute(_API_CALLS_RECENT))
            limits = list(connection.execute(_RATE_LIMITS))
            reinstall = int(connection.execute(_REINSTALL).scalar_one())
            paused = int(connection.execute(_PAUSED).scalar_one())
            live = len(heartbeats.live_workers(connection, heartbeats.LIVE_SECONDS))
            journal = _journal(connection)
        return [
            _labelled(
                "inbox_events",
                "Inbox rows by status (done is estimated from table statistics on large tables)",
                ["status"],
                {(s,): n for s, n in inbox.items()},
            ),
            _gauge(
                "inbox_oldest_due_seconds",
                "How long the oldest due inbox event has been waiting to be applied",
                oldest_due,
            ),
            _labelled(
                "apply_lag_seconds",
                f"Received to processed, over the events processed in the last"
                f" {LAG_WINDOW_SECONDS} s (newest {LAG_SAMPLE}); 0 when there were none",
                ["quantile"],
                {("0.5",): lag.p50 or 0.0, ("0.99",): lag.p99 or 0.0},
            ),
            _gauge(
                "apply_lag_events",
                "How many processed events the apply lag quantiles were taken over",
                lag.events,
            ),
            _labelled(
                "hydration_requests",
                "Records waiting to be fetched from HubSpot (pending) or given up on (dead)",
                ["status"],
                {(s,): hydration.get(s, 0) for s in ("pending", "dead")},
            ),
            _labelled(
                "action_runs",
                "Action runs by status (done is estimated from table statistics on large tables)",
                ["status"],
                {(s,): n for s, n in runs.items()},
            ),
            _labelled(
                "dead_letters",
                "Dead rows awaiting an operator, by kind: inbox events, action runs, hydration",
                ["kind"],
                {
                    ("inbox",): inbox["dead"],
                    ("actions",): runs["dead"],
                    ("hydration",): hydration.get("dead", 0),
                },
            ),
            _api_calls(calls),
            _labelled(
                "hubspot_api_calls_recent",
                f"HubSpot API calls by every worker in the minutes begun within the last"
                f" {RECENT_CALLS_SECONDS} s (the current minute and the 4 before it), by endpoint"
                " and outcome; outcome 429: rate limited",
                ["endpoint", "outcome"],
                {(r.endpoint, r.outcome): int(r.calls) for r in recent},
            ),
            _last_429(calls),
            _labelled(
                "rate_limit_remaining",
                "Calls the shared per-portal budget allows now (0 while blocked after a 429)",
                ["portal", "bucket"],
                {(str(r.portal_id), r.bucket): r.remaining for r in limits},
            ),
            _labelled(
                "rate_limit_blocked_seconds",
                "Seconds until a portal's bucket may call HubSpot again after a 429",
                ["portal", "bucket"],
                {(str(r.portal_id), r.bucket): float(r.blocked_seconds) for r in limits},
            ),
            _gauge(
                "portals_needing_reinstall",
                "Portals whose OAuth tokens stopped working: the app must be installed again",
                reinstall,
            ),
            _gauge(
                "portals_paused",
                "Portals an operator paused: their events are stored but not applied, their"
                " actions not run, their records not fetched (`hubspot-webhooks portals list`)",
                paused,
            ),
            _gauge(
                "workers_live",
                f"Worker processes seen within {heartbeats.LIVE_SECONDS:.0f} s (0: no worker)",
                live,
            ),
            *journal,
        ]


def _by_status(connection: sa.Connection, table: str, statuses: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(statuses, 0)
    for status, count in connection.execute(sa.text(_OPEN.format(table=table))):
        counts[status] = int(count)
    estimate = float(connection.execute(_ESTIMATE, {"table": table}).scalar_one())
    if estimate >= EXACT_COUNT_BELOW:
        open_rows = sum(n for s, n in counts.items() if s != "done")
        counts["done"] = max(0, round(estimate) - open_rows)
    else:
        counts["done"] = int(connection.execute(sa.text(_DONE.format(table=table))).scalar_one())
    return counts


def _journal(connection: sa.Connection) -> list[GaugeMetricFamily | CounterMetricFamily]:
    """The Webhooks Journal reader's families; none before a reader has a cursor (push only)."""
    cursors = list(connection.execute(_JOURNAL_CURSORS))
    if not cursors:
        return []
    names = [r.journal for r in cursors]
    failed = {r.journal: int(r.n) for r in connection.execute(_JOURNAL_FAILED)}
    estimate = float(connection.execute(_ESTIMATE, {"table": "journal_entries"}).scalar_one())
    if estimate >= EXACT_COUNT_BELOW and len(names) == 1:
        stored = {names[0]: max(0, round(estimate) - sum(failed.values()))}
    else:
        stored = {r.journal: int(r.n) for r in connection.execute(_JOURNAL_STORED)}
    gaps = {r.journal: int(r.n) for r in connection.execute(_JOURNAL_GAPS)}
    errors = CounterMetricFamily(
        PREFIX + "journal_errors",
        "Failed rounds of the Webhooks Journal reader (HubSpot or the database refused it)",
        labels=["journal"],
    )
    for row in cursors:
        errors.add_metric([row.journal], row.errors)
    return [
        _labelled(
            "journal_behind_entries",
            "Journal entries the reader saw after its offset at its last round, at most a page"
            " (100: 100 or more); 0 once it has read to the journal's end",
            ["journal"],
            {(r.journal,): r.behind for r in cursors if r.behind is not None},
        ),
        _labelled(
            "journal_last_entry_age_seconds",
            "Seconds since the reader last stored a journal entry's events",
            ["journal"],
            {
                (r.journal,): max(0.0, float(r.entry_age))
                for r in cursors
                if r.entry_age is not None
            },
        ),
        _labelled(
            "journal_entries",
            "Journal entries read, by status: stored, or failed (the file could not be parsed;"
            " kept for `hubspot-webhooks journal replay --failed`); stored is estimated from"
            " table statistics on large tables",
            ["journal", "status"],
            {
                **{(n, "stored"): stored.get(n, 0) for n in names},
                **{(n, "failed"): failed.get(n, 0) for n in names},
            },
        ),
        _labelled(
            "journal_gaps_open",
            "Windows the journal no longer held when the reader got there (offset or file"
            " expired) whose reconcile has not completed yet",
            ["journal"],
            {(n,): gaps.get(n, 0) for n in names},
        ),
        errors,
    ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _labelled(
    name: str, documentation: str, labels: list[str], values: dict[tuple[str, ...], float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, documentation, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def _api_calls(rows: list[sa.Row[tuple[str, str, int, float]]]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        PREFIX + "hubspot_api_calls",
        "HubSpot API calls by every worker, by endpoint and outcome (ok, an HTTP status such as"
        " 429, connection_error); increase(...[5m]) gives the recent ones",
        labels=["endpoint", "outcome"],
    )
    for row in rows:
        family.add_metric([row.endpoint, row.outcome], int(row.calls))
    return family


def _last_429(rows: list[sa.Row[tuple[str, str, int, float]]]) -> GaugeMetricFamily:
    """Seconds since HubSpot last answered 429, by endpoint."""
    family = GaugeMetricFamily(
        PREFIX + "hubspot_api_last_429_seconds",
        "Seconds since HubSpot last answered 429 to an endpoint (absent: never)",
        labels=["endpoint"],
    )
    for row in rows:
        if row.outcome == "429":
            family.add_metric([row.endpoint], max(0.0, float(row.age)))
    return family


def queries() -> list[tuple[str, sa.TextClause, dict[str, str]]]:
    """Each query a scrape runs, named, with its parameters (for EXPLAIN in bench/)."""
    named: list[tuple[str, sa.TextClause, dict[str, str]]] = []
    for table in ("inbox_events", "action_runs"):
        named.append((f"{table} not done", sa.text(_OPEN.format(table=table)), {}))
        named.append((f"{table} size estimate", _ESTIMATE, {"table": table}))
    named += [
        ("hydration_requests", _HYDRATION, {}),
        ("oldest due", _OLDEST_DUE, {}),
        ("apply lag", _APPLY_LAG, {}),
        ("hubspot_api_calls", _API_CALLS, {}),
        ("hubspot_api_call_minutes recent", _API_CALLS_RECENT, {}),
        ("rate_limits", _RATE_LIMITS, {}),
        ("hubspot_tokens", _REINSTALL, {}),
        ("portal_controls", _PAUSED, {}),
        ("journal_cursors", _JOURNAL_CURSORS, {}),
        ("journal_entries failed", _JOURNAL_FAILED, {}),
        ("journal_entries size estimate", _ESTIMATE, {"table": "journal_entries"}),
        ("journal_entries stored", _JOURNAL_STORED, {}),
        ("journal_gaps open", _JOURNAL_GAPS, {}),
    ]
    return named
