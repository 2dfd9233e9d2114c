"""Operator commands: look at and steer a running system from the command line.

Each function is one `hubspot-webhooks` subcommand after its arguments are parsed: it opens the
database (DATABASE_URL, or the embedded server `dev` runs), asks the owning module for rows or
changes, prints, and returns the exit code. Payloads stay out of listings (personal data).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from service import db, fetches, inbox, outbox
from service.hubspot import client
from service.hubspot.reconcile import OBJECT_TYPES, Progress, known_portals, reconcile
from service.ops import subscription_checks
from service.rules.language import load_rules_file
from service.settings import Settings, SettingsError

MIRROR_VIEWS = {
    "contacts": "hubspot_contacts",
    "companies": "hubspot_companies",
    "deals": "hubspot_deals",
    "associations": "hubspot_associations",
}


def _out(*lines: str) -> None:
    """Results go to stdout (pipe them); counts and problems to stderr."""
    for line in lines:
        sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


def _json(row: sa.Row[object], *, indent: int | None = None) -> str:
    return json.dumps(dict(row._mapping), indent=indent, default=str, ensure_ascii=False)


@contextmanager
def operator_database(settings: Settings) -> Iterator[sa.Engine]:
    """An engine on DATABASE_URL, or on the embedded server `dev` runs (started if needed).

    Missing tables become a DatabaseError saying to run `migrate`, not a traceback.
    """
    with db.one_off_engine(settings.database_url, settings.data_dir) as engine:
        yield engine


def events(
    settings: Settings, words: Sequence[str], filters: inbox.Filters, *, limit: int, as_json: bool
) -> int:
    """`events [show] [ID...]`: list matching inbox rows, or show the given ones in full."""
    ids = [w for w in words if w != "show"]
    if not all(i.isdigit() for i in ids):
        _err("hubspot-webhooks events: ID must be an inbox id (a number)")
        return 2
    if ids:
        return show_events(settings, [int(i) for i in ids])
    return list_events(settings, filters, limit=limit, as_json=as_json)


def show_events(settings: Settings, ids: Sequence[int]) -> int:
    """`events show ID...`: each inbox row in full (payload, error, traceback)."""
    with operator_database(settings) as engine, engine.connect() as connection:
        for row_id in ids:
            row = inbox.get_event(connection, row_id)
            if row is None:
                _err(f"no inbox event with id {row_id}")
                return 1
            _out(json.dumps(dict(row._mapping), indent=2, default=str))
    return 0


def list_events(settings: Settings, filters: inbox.Filters, *, limit: int, as_json: bool) -> int:
    """`events`: the newest matching inbox rows, with the first line of each error."""
    with operator_database(settings) as engine, engine.connect() as connection:
        rows = inbox.list_events(connection, filters, limit=limit)
    if as_json:
        _out(*(json.dumps(dict(row._mapping), default=str) for row in rows))
        return 0
    _out(
        f"{'id':>8}  {'status':<8} {'att':>3}  {'type':<32} {'portal':>10} {'object':>12}  received"
    )
    for row in rows:
        _out(
            f"{row.id:>8}  {row.status:<8} {row.attempts:>3}  {row.subscription_type:<32}"
            f" {row.portal_id:>10} {row.object_id:>12}  {row.received_at:%Y-%m-%d %H:%M:%S}"
        )
        if row.last_error and row.status in ("failed", "dead"):
            _out(f"{'':>10}error: {row.last_error.splitlines()[0][:120]}")
    _err(f"{len(rows)} events")
    return 0


def replay_events(settings: Settings, filters: inbox.Filters, *, every: bool = False) -> int:
    """`replay`: re-queue the matching inbox rows; no filter at all needs `every` (--all)."""
    if filters == inbox.Filters() and not every:
        _err(
            "hubspot-webhooks replay: say which events (--id, --status, --type, --portal,"
            " --object-id, --since, --until) or --all"
        )
        return 2
    with operator_database(settings) as engine, engine.begin() as connection:
        count = inbox.replay(connection, filters)
    _out(f"re-queued {count} events")
    return 0


def show_mirror(
    settings: Settings, view: str, *, portal: int | None, object_id: int | None, limit: int
) -> int:
    """`mirror VIEW`: rows of a hubspot_* view, newest first, as JSON lines."""
    name = MIRROR_VIEWS[view]
    clauses, params = ["true"], {"limit": limit}
    if portal is not None:
        clauses.append("portal_id = :portal")
        params["portal"] = portal
    if object_id is not None:
        ids = "from_id = :oid OR to_id = :oid" if view == "associations" else "object_id = :oid"
        clauses.append(f"({ids})")
        params["oid"] = object_id
    sql = (
        f"SELECT * FROM {name} WHERE {' AND '.join(clauses)} ORDER BY updated_at DESC LIMIT :limit"
    )
    with operator_database(settings) as engine, engine.connect() as connection:
        rows = connection.execute(sa.text(sql), params).all()
    _out(*(json.dumps(dict(row._mapping), default=str) for row in rows))
    _err(f"{len(rows)} rows from {name}")
    return 0


def run_reconcile(
    settings: Settings, *, portals: Sequence[int], object_type: str, since: datetime | None
) -> int:
    """`reconcile`: pull records modified since a time into the mirror, printing a summary."""
    with operator_database(settings) as engine:
        api = client.from_settings(settings, engine)
        if api is None:
            raise SettingsError(
                "HUBSPOT_ACCESS_TOKEN is not set (nor HUBSPOT_CLIENT_ID): reconcile calls the API"
            )
        portals = list(portals) or known_portals(engine)
        if not portals:
            _err("hubspot-webhooks reconcile: no portal known yet; pass --portal")
            return 2
        types = OBJECT_TYPES if object_type == "all" else (object_type,)
        since_ms = int(since.timestamp() * 1000) if since else None
        for portal in portals:
            for name in types:
                summary = reconcile(
                    engine,
                    api,
                    portal_id=portal,
                    object_type=name,
                    since_ms=since_ms,
                    lookback_seconds=settings.reconcile_lookback_seconds,
                    configured_properties=settings.mirror_properties,
                    progress=Progress(),
                )
                _out(summary.line())
    return 0


def hydration(settings: Settings, filters: fetches.Filters, *, limit: int, retry: bool) -> int:
    """`hydration`: list pending and dead fetch requests, or re-queue them with `retry`."""
    with operator_database(settings) as engine, engine.begin() as connection:
        if retry:
            _out(f"re-queued {fetches.retry(connection, filters)} fetches")
            return 0
        rows = fetches.list_requests(connection, filters, limit=limit)
    _out(*(json.dumps(dict(row._mapping), default=str) for row in rows))
    _err(f"{len(rows)} fetch requests")
    return 0


def rules_check(args: argparse.Namespace, settings: Settings) -> int:
    """`rules check [FILE] [--subscriptions FILE]` with RULES_FILE and SUBSCRIPTIONS_FILE."""
    subscriptions = args.subscriptions or settings.subscriptions_file
    return check_rules(args.file or settings.rules_file, subscriptions, settings.mirror_properties)


def check_rules(
    path: Path | None,
    subscriptions: Path | None = None,
    mirror_properties: Mapping[str, tuple[str, ...]] | None = None,
) -> int:
    """`rules check [FILE]`: validate a rules file offline (RuleError lists every problem);
    with a subscriptions file, warn about events the rules or the mirror need and nothing
    subscribes to (subscription_checks.py)."""
    if path is None:
        _err("hubspot-webhooks rules check: give a FILE or set RULES_FILE")
        return 2
    rules, warnings = load_rules_file(path)
    if subscriptions is not None:
        warnings += subscription_checks.file_warnings(subscriptions, rules, mirror_properties)
    for warning in warnings:
        _err(warning)
    actions = sum(len(rule.actions) for rule in rules)
    _out(f"{path}: {len(rules)} rules, {actions} actions: ok")
    return 0


def actions(
    settings: Settings,
    words: Sequence[str],
    filters: outbox.RunFilters,
    *,
    limit: int,
    every: bool = False,
) -> int:
    """`actions`, `actions show ID...` or `actions replay` (which needs a filter or `every`)."""
    if list(words[:1]) == ["replay"]:
        if filters == outbox.RunFilters() and not every:
            _err(
                "hubspot-webhooks actions replay: say which runs (--id, --status, --rule,"
                " --portal, --since) or --all"
            )
            return 2
        return replay_actions(settings, filters)
    ids = [w for w in words if w != "show"]
    if not all(w.isdigit() for w in ids):
        _err("hubspot-webhooks actions: use `actions show ID` or `actions replay`")
        return 2
    if ids:
        return show_actions(settings, [int(i) for i in ids])
    return list_actions(settings, filters, limit=limit)


def replay_actions(settings: Settings, filters: outbox.RunFilters) -> int:
    """`actions replay`: run the matching action runs again (dead ones included)."""
    with operator_database(settings) as engine, engine.begin() as connection:
        _out(f"re-queued {outbox.replay(connection, filters)} action runs")
    return 0


def show_actions(settings: Settings, ids: Sequence[int]) -> int:
    """`actions show ID...`: each action run in full."""
    with operator_database(settings) as engine, engine.connect() as connection:
        for run_id in ids:
            row = outbox.get_run(connection, run_id)
            if row is None:
                _err(f"no action run with id {run_id}")
                return 1
            _out(_json(row, indent=2))
    return 0


def list_actions(settings: Settings, filters: outbox.RunFilters, *, limit: int) -> int:
    """`actions`: the newest matching runs, with the first line of each error."""
    with operator_database(settings) as engine, engine.connect() as connection:
        rows = outbox.list_runs(connection, filters, limit=limit)
    _out(f"{'id':>8}  {'status':<7} {'att':>3}  {'action':<13} {'rule':<28} object  result")
    for row in rows:
        _out(
            f"{row.id:>8}  {row.status:<7} {row.attempts:>3}  {row.action:<13} {row.rule:<28}"
            f" {row.object_type}:{row.object_id}  {row.result or ''}"
        )
        if row.last_error and row.status in ("failed", "dead"):
            _out(f"{'':>10}error: {row.last_error.splitlines()[0][:120]}")
    _err(f"{len(rows)} action runs")
    return 0
