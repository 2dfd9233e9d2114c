"""The `hubspot-webhooks` command: each subcommand builds Settings and calls a domain function."""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service import db, inbox, outbox
from service.hubspot import client as hubspot_api
from service.hubspot.hydration import Hydrator
from service.hubspot.pipelines import refresh_stale
from service.hubspot.reconcile import (
    OBJECT_TYPES,
    Progress,
    known_portals,
    reconcile,
    reconcile_all,
)
from service.logs import configure_logging
from service.models import INBOX_STATUSES
from service.outbox import RUN_STATUSES, RunFilters
from service.rules.engine import RuleEngine, load_engine
from service.rules.language import RuleError, load_rules_file
from service.rules.registry import load_modules, registry
from service.settings import Settings, SettingsError
from service.worker.apply import ActionRunner, Worker, run_loop

log = logging.getLogger(__name__)

DEV_SECRET_FILE = "dev-client-secret"  # noqa: S105 - a file name, not a secret
WEBHOOK_PATH = "/webhooks/hubspot"
RECEIVER_SECRET_FILE = "receiver-secret"  # noqa: S105 - a file name, not a secret


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `hubspot-webhooks` and `python -m service`."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.run(args, settings)
    except SettingsError as exc:
        print(f"hubspot-webhooks: configuration error: {exc}", file=sys.stderr)
        return 2
    except RuleError as exc:
        print("hubspot-webhooks: invalid rules:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except db.DatabaseError as exc:
        print(f"hubspot-webhooks: database error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubspot-webhooks",
        description="Receive HubSpot webhooks durably, exactly once, and mirror the CRM.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the web server (uses DATABASE_URL)")
    serve.add_argument("--host", default="0.0.0.0", help="interface to bind (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=int, help="port (default $PORT, else 8000)")
    serve.set_defaults(run=_serve)

    dev = sub.add_parser(
        "dev", help="local development: embedded database if needed, migrate, serve"
    )
    dev.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="port (default $PORT, else 8000)")
    dev.set_defaults(run=_dev)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest version")
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.set_defaults(run=_migrate)

    worker = sub.add_parser(
        "worker", help="apply stored events to the mirror (SIGTERM: finish, exit)"
    )
    worker.add_argument(
        "--drain", action="store_true", help="apply everything due, then exit instead of waiting"
    )
    worker.set_defaults(run=_worker)

    _operator_commands(sub)

    receiver = sub.add_parser(
        "receiver", help="a local endpoint for the webhook action: verifies and prints deliveries"
    )
    receiver.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    receiver.add_argument(
        "--secret", help="whsec_... secret (default: DATA_DIR/receiver-secret, created once)"
    )
    receiver.set_defaults(run=_receiver)

    from service.devtools import send as sender

    sender.add_arguments(
        sub.add_parser("send", help="sign and POST sample or given events to a webhook URL")
    )
    sub.choices["send"].set_defaults(run=_send)
    return parser


def _operator_commands(sub: Any) -> None:
    """Commands for looking at and steering a running system."""
    events = sub.add_parser("events", help="list inbox events, or show one: events [show] ID")
    events.add_argument("show", nargs="*", metavar="ID", help="show this event in full")
    _add_filters(events)
    events.add_argument("--limit", type=int, default=50, help="rows to list (default 50)")
    events.add_argument("--json", action="store_true", help="print JSON lines")
    events.set_defaults(run=_events)

    replay = sub.add_parser(
        "replay", help="re-queue events by id, status, type or time (dead and ignored included)"
    )
    _add_filters(replay)
    replay.add_argument("--id", type=int, action="append", default=[], help="inbox id (repeatable)")
    replay.add_argument("--all", action="store_true", help="re-queue every event (no filter)")
    replay.set_defaults(run=_replay)

    mirror = sub.add_parser("mirror", help="show mirrored records from the hubspot_* views")
    mirror.add_argument("view", choices=sorted(MIRROR_VIEWS), help="which view")
    mirror.add_argument("--portal", type=int, help="portal (HubSpot account) id")
    mirror.add_argument("--object-id", type=int, help="object id (from or to, for associations)")
    mirror.add_argument("--limit", type=int, default=20, help="rows (default 20, newest first)")
    mirror.set_defaults(run=_mirror)

    reconcile = sub.add_parser(
        "reconcile", help="pull records modified since a time from HubSpot's API into the mirror"
    )
    reconcile.add_argument("--portal", type=int, action="append", default=[], help="repeatable")
    reconcile.add_argument(
        "--object", default="all", choices=[*OBJECT_TYPES, "all"], help="default all"
    )
    reconcile.add_argument(
        "--since",
        type=_when,
        help="modified at or after (ISO time or 30m, 2h, 1d); default: the last successful"
        " reconcile minus RECONCILE_LOOKBACK, or everything the first time",
    )
    reconcile.set_defaults(run=_reconcile)

    hydration = sub.add_parser(
        "hydration", help="list records waiting to be fetched from HubSpot, and failed fetches"
    )
    hydration.add_argument("--status", choices=["pending", "dead"], help="default: both")
    hydration.add_argument("--portal", type=int, help="portal (HubSpot account) id")
    hydration.add_argument("--type", help="object type, e.g. contacts")
    hydration.add_argument("--limit", type=int, default=50, help="rows (default 50)")
    hydration.add_argument(
        "--retry", action="store_true", help="re-queue the matching requests for a fetch now"
    )
    hydration.set_defaults(run=_hydration)

    rules = sub.add_parser("rules", help="rules: `rules check [FILE]` validates offline")
    rules.add_argument("verb", choices=["check"], help="what to do")
    rules.add_argument("file", nargs="?", type=Path, help="rules file (default $RULES_FILE)")
    rules.set_defaults(run=_rules)

    runs = sub.add_parser(
        "actions", help="list action runs, `actions show ID`, or `actions replay ...`"
    )
    runs.add_argument("words", nargs="*", metavar="show ID | replay", help="what to do")
    runs.add_argument("--status", action="append", default=[], choices=RUN_STATUSES)
    runs.add_argument("--rule", help="rule name")
    runs.add_argument("--portal", type=int, help="portal (HubSpot account) id")
    runs.add_argument("--since", type=_when, help="created at or after: ISO time or 30m, 2h, 1d")
    runs.add_argument("--id", type=int, action="append", default=[], help="run id (repeatable)")
    runs.add_argument("--all", action="store_true", help="with replay: every run")
    runs.add_argument("--limit", type=int, default=50, help="rows to list (default 50)")
    runs.set_defaults(run=_actions)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status", action="append", default=[], choices=INBOX_STATUSES, help="repeatable"
    )
    parser.add_argument("--type", help="subscription type, e.g. contact.propertyChange")
    parser.add_argument("--portal", type=int, help="portal (HubSpot account) id")
    parser.add_argument("--object-id", type=int, help="HubSpot object id")
    parser.add_argument("--since", type=_when, help="received at or after: ISO time or 30m, 2h, 1d")
    parser.add_argument("--until", type=_when, help="received before: ISO time or 30m, 2h, 1d")


_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def _when(value: str) -> datetime:
    match = _RELATIVE.match(value)
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return db.utcnow() - timedelta(**{unit: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO time (2026-11-25T10:00Z) or an age (30m, 2h, 1d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=db.utcnow().tzinfo)


def _filters(args: argparse.Namespace) -> inbox.Filters:
    return inbox.Filters(
        ids=tuple(getattr(args, "id", ())),
        statuses=tuple(args.status),
        subscription_type=args.type,
        portal_id=args.portal,
        object_id=args.object_id,
        since=args.since,
        until=args.until,
    )


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "json")
    if settings.database_url is None:
        raise SettingsError(
            "DATABASE_URL is not set: `serve` needs a database (use `dev` for an embedded one)"
        )
    settings.require_client_secret()
    load_modules(settings.handler_modules)
    _rule_engine(settings)  # refuse to start with an invalid rules file
    _run_uvicorn(settings, settings.database_url, args.host, args.port or settings.port)
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "console")
    if not settings.client_secrets:
        settings = settings.with_overrides(client_secrets=(dev_client_secret(settings.data_dir),))
    port = args.port or settings.port
    with db.database_url_for(settings.database_url, settings.data_dir) as url:
        db.migrate(url)
        local = f"http://{_display_host(args.host)}:{port}{WEBHOOK_PATH}"
        public = settings.webhook_public_url or "(set WEBHOOK_PUBLIC_URL for ngrok)"
        print(
            f"\n  Webhook URL:  {local}\n"
            f"  Public URL:   {public}\n"
            f"  Try it:       hubspot-webhooks send contact.creation --url {local}\n",
            file=sys.stderr,
        )
        with _background_worker(settings, url):
            _run_uvicorn(settings, url, args.host, port)
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "json")
    where = (
        "DATABASE_URL" if settings.database_url else f"the embedded database in {settings.data_dir}"
    )
    with db.database_url_for(settings.database_url, settings.data_dir) as url:
        db.migrate(url, args.revision)
    print(f"migrated {where} to {args.revision}", file=sys.stderr)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "json")
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set: `worker` needs the service's database")
    load_modules(settings.handler_modules)
    rules = _rule_engine(settings)
    engine = db.create_engine(settings.database_url, pool_size=2)
    worker = _make_worker(settings, engine, rules)
    try:
        if args.drain:
            print(f"applied {worker.drain()} events", file=sys.stderr)
            hydrator = _make_hydrator(settings, engine)
            if hydrator is not None:
                print(f"fetched {hydrator.drain()} records", file=sys.stderr)
                hydrator.close()
            runner = _make_runner(settings, engine, rules)
            print(f"ran {runner.drain()} actions", file=sys.stderr)
            runner.close()
            return 0
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        with _stage_threads(settings, engine, stop, rules):
            worker.run(stop)
    finally:
        engine.dispose()
    return 0


def _rule_engine(settings: Settings) -> RuleEngine | None:
    """Rules of RULES_FILE and code (after HANDLER_MODULES are loaded); RuleError if invalid."""
    return load_engine(settings, registry.rules)


def _make_worker(settings: Settings, engine: Any, rules: RuleEngine | None) -> Worker:
    return Worker(
        engine,
        batch_size=settings.worker_batch_size,
        max_attempts=settings.max_attempts,
        poll_seconds=settings.worker_poll_seconds,
        rules=rules,
    )


def _make_runner(settings: Settings, engine: Any, rules: RuleEngine | None) -> ActionRunner:
    return ActionRunner(
        engine,
        rules.rules if rules is not None else [],
        settings,
        api=hubspot_api.from_settings(settings, engine),
    )


def _make_hydrator(settings: Settings, engine: Any) -> Hydrator | None:
    api = hubspot_api.from_settings(settings, engine)
    if api is None:
        log.warning(
            "hydration_disabled",
            extra={"reason": "set HUBSPOT_ACCESS_TOKEN or HUBSPOT_CLIENT_ID to fetch records"},
        )
        return None
    return Hydrator(
        engine,
        api,
        settings.mirror_properties,
        max_attempts=settings.max_attempts,
        pipelined=True,
    )


@contextmanager
def _stage_threads(
    settings: Settings, engine: Any, stop: threading.Event, rules: RuleEngine | None
) -> Iterator[None]:
    """The stages that call out run in threads of their own beside the apply loop."""
    runner = _make_runner(settings, engine, rules)
    threads = [
        threading.Thread(
            target=run_loop,
            args=("act", runner.run_once, stop),
            kwargs={"idle_seconds": min(1.0, settings.worker_poll_seconds)},
            name="act",
            daemon=True,
        )
    ]
    hydrator = _make_hydrator(settings, engine)
    interval = settings.reconcile_interval_seconds
    if hydrator is not None and interval is not None:
        api = hydrator.api

        def scheduled_reconcile() -> int:
            reconcile_all(
                engine,
                api,
                portals=known_portals(engine),
                lookback_seconds=settings.reconcile_lookback_seconds,
                configured_properties=settings.mirror_properties,
            )
            return 0  # then wait for the next interval

        threads.append(
            threading.Thread(
                target=run_loop,
                args=("reconcile", scheduled_reconcile, stop),
                kwargs={"idle_seconds": interval},
                name="reconcile",
                daemon=True,
            )
        )
    if hydrator is not None and rules is not None and rules.uses_stage_labels:
        api_for_stages = hydrator.api

        def stage_labels() -> int:
            refresh_stale(engine, api_for_stages, known_portals(engine))
            return 0  # then wait

        threads.append(
            threading.Thread(
                target=run_loop,
                args=("pipelines", stage_labels, stop),
                kwargs={"idle_seconds": 600.0},
                name="pipelines",
                daemon=True,
            )
        )
    if hydrator is not None:
        threads.append(
            threading.Thread(
                target=run_loop,
                args=("hydrate", hydrator.run_once, stop),
                kwargs={"idle_seconds": settings.worker_poll_seconds},
                name="hydrate",
                daemon=True,
            )
        )
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        runner.close()
        if hydrator is not None:
            hydrator.close()


@contextmanager
def _background_worker(settings: Settings, url: str) -> Iterator[None]:
    """`dev` runs a worker beside the web server, in threads, until the server stops."""
    load_modules(settings.handler_modules)
    rules = _rule_engine(settings)
    engine = db.create_engine(url, pool_size=3)
    stop = threading.Event()
    thread = threading.Thread(
        target=_make_worker(settings, engine, rules).run, args=(stop,), name="worker", daemon=True
    )
    with _stage_threads(settings, engine, stop, rules):
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)
    engine.dispose()


@contextmanager
def _operator_database(settings: Settings) -> Iterator[Any]:
    """An engine on DATABASE_URL, or on the embedded server `dev` runs (started if needed)."""
    with db.database_url_for(settings.database_url, settings.data_dir) as url:
        engine = db.create_engine(url, pool_size=1)
        try:
            yield engine
        finally:
            engine.dispose()


def _events(args: argparse.Namespace, settings: Settings) -> int:
    ids = [a for a in args.show if a != "show"]
    if not all(a.isdigit() for a in ids):
        print("hubspot-webhooks events: ID must be an inbox id (a number)", file=sys.stderr)
        return 2
    with _operator_database(settings) as engine, engine.connect() as connection:
        if ids:
            for row_id in ids:
                row = inbox.get_event(connection, int(row_id))
                if row is None:
                    print(f"no inbox event with id {row_id}", file=sys.stderr)
                    return 1
                print(json.dumps(dict(row._mapping), indent=2, default=str))
            return 0
        rows = inbox.list_events(connection, _filters(args), limit=args.limit)
    if args.json:
        for row in rows:
            print(json.dumps(dict(row._mapping), default=str))
        return 0
    print(
        f"{'id':>8}  {'status':<8} {'att':>3}  {'type':<32} {'portal':>10} {'object':>12}  received"
    )
    for row in rows:
        print(
            f"{row.id:>8}  {row.status:<8} {row.attempts:>3}  {row.subscription_type:<32}"
            f" {row.portal_id:>10} {row.object_id:>12}  {row.received_at:%Y-%m-%d %H:%M:%S}"
        )
        if row.last_error and row.status in ("failed", "dead"):
            print(f"{'':>10}error: {row.last_error.splitlines()[0][:120]}")
    print(f"{len(rows)} events", file=sys.stderr)
    return 0


MIRROR_VIEWS = {
    "contacts": "hubspot_contacts",
    "companies": "hubspot_companies",
    "deals": "hubspot_deals",
    "associations": "hubspot_associations",
}


def _mirror(args: argparse.Namespace, settings: Settings) -> int:
    view = MIRROR_VIEWS[args.view]
    clauses, params = ["true"], {"limit": args.limit}
    if args.portal is not None:
        clauses.append("portal_id = :portal")
        params["portal"] = args.portal
    if args.object_id is not None:
        ids = (
            "from_id = :oid OR to_id = :oid" if args.view == "associations" else "object_id = :oid"
        )
        clauses.append(f"({ids})")
        params["oid"] = args.object_id
    sql = (
        f"SELECT * FROM {view} WHERE {' AND '.join(clauses)} ORDER BY updated_at DESC LIMIT :limit"
    )
    with _operator_database(settings) as engine, engine.connect() as connection:
        rows = connection.execute(sa.text(sql), params).all()
    for row in rows:
        print(json.dumps(dict(row._mapping), default=str))
    print(f"{len(rows)} rows from {view}", file=sys.stderr)
    return 0


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "console")
    with _operator_database(settings) as engine:
        api = hubspot_api.from_settings(settings, engine)
        if api is None:
            raise SettingsError(
                "HUBSPOT_ACCESS_TOKEN is not set (nor HUBSPOT_CLIENT_ID): reconcile calls the API"
            )
        portals = args.portal or known_portals(engine)
        if not portals:
            print("hubspot-webhooks reconcile: no portal known yet; pass --portal", file=sys.stderr)
            return 2
        types = OBJECT_TYPES if args.object == "all" else (args.object,)
        since_ms = int(args.since.timestamp() * 1000) if args.since else None
        for portal in portals:
            for object_type in types:
                summary = reconcile(
                    engine,
                    api,
                    portal_id=portal,
                    object_type=object_type,
                    since_ms=since_ms,
                    lookback_seconds=settings.reconcile_lookback_seconds,
                    configured_properties=settings.mirror_properties,
                    progress=Progress(),
                )
                print(summary.line())
    return 0


def _hydration(args: argparse.Namespace, settings: Settings) -> int:
    clauses, params = ["true"], {"limit": args.limit}
    for column, value in (
        ("status", args.status),
        ("portal_id", args.portal),
        ("object_type", args.type),
    ):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    where = " AND ".join(clauses)
    with _operator_database(settings) as engine, engine.begin() as connection:
        if args.retry:
            count = connection.execute(
                sa.text(
                    "UPDATE hydration_requests SET status = 'pending', attempts = 0,"
                    f" next_attempt_at = now(), last_error = NULL WHERE {where}"
                ),
                params,
            ).rowcount
            print(f"re-queued {count} fetches")
            return 0
        rows = connection.execute(
            sa.text(
                f"SELECT * FROM hydration_requests WHERE {where}"
                " ORDER BY status, next_attempt_at LIMIT :limit"
            ),
            params,
        ).all()
    for row in rows:
        print(json.dumps(dict(row._mapping), default=str))
    print(f"{len(rows)} fetch requests", file=sys.stderr)
    return 0


def _rules(args: argparse.Namespace, settings: Settings) -> int:
    path = args.file or settings.rules_file
    if path is None:
        print("hubspot-webhooks rules check: give a FILE or set RULES_FILE", file=sys.stderr)
        return 2
    rules, warnings = load_rules_file(path)
    for warning in warnings:
        print(warning, file=sys.stderr)
    actions = sum(len(rule.actions) for rule in rules)
    print(f"{path}: {len(rules)} rules, {actions} actions: ok")
    return 0


def _actions(args: argparse.Namespace, settings: Settings) -> int:
    words = list(args.words)
    filters = RunFilters(
        ids=tuple(args.id),
        statuses=tuple(args.status),
        rule=args.rule,
        portal_id=args.portal,
        since=args.since,
    )
    if words[:1] == ["replay"]:
        if filters == RunFilters() and not args.all:
            print(
                "hubspot-webhooks actions replay: say which runs (--id, --status, --rule,"
                " --portal, --since) or --all",
                file=sys.stderr,
            )
            return 2
        with _operator_database(settings) as engine, engine.begin() as connection:
            print(f"re-queued {outbox.replay(connection, filters)} action runs")
        return 0
    ids = [w for w in words if w != "show"]
    if not all(w.isdigit() for w in ids):
        print(
            "hubspot-webhooks actions: use `actions show ID` or `actions replay`", file=sys.stderr
        )
        return 2
    with _operator_database(settings) as engine, engine.connect() as connection:
        if ids:
            for run_id in ids:
                row = connection.execute(
                    sa.text("SELECT * FROM action_runs WHERE id = :id"), {"id": int(run_id)}
                ).first()
                if row is None:
                    print(f"no action run with id {run_id}", file=sys.stderr)
                    return 1
                print(json.dumps(dict(row._mapping), indent=2, default=str, ensure_ascii=False))
            return 0
        rows = outbox.list_runs(connection, filters, limit=args.limit)
    for row in rows:
        print(
            f"{row.id:>8}  {row.status:<7} {row.attempts:>3}  {row.action:<13} {row.rule:<28}"
            f" {row.object_type}:{row.object_id}  {row.result or ''}"
        )
        if row.last_error and row.status in ("failed", "dead"):
            print(f"{'':>10}error: {row.last_error.splitlines()[0][:120]}")
    print(f"{len(rows)} action runs", file=sys.stderr)
    return 0


def _receiver(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from service.devtools.receiver import create_receiver, new_secret

    configure_logging("WARNING", "console")
    secret = args.secret
    if secret is None:
        path = settings.data_dir / RECEIVER_SECRET_FILE
        if not path.is_file():
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(new_secret())
        secret = path.read_text().strip()
        print(f"secret: in {path} (never printed)", file=sys.stderr)
    print(f"receiving signed deliveries on http://127.0.0.1:{args.port}/", file=sys.stderr)
    uvicorn.run(create_receiver(secret), host="127.0.0.1", port=args.port, log_config=None)
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    filters = _filters(args)
    if filters == inbox.Filters() and not args.all:
        print(
            "hubspot-webhooks replay: say which events (--id, --status, --type, --portal,"
            " --object-id, --since, --until) or --all",
            file=sys.stderr,
        )
        return 2
    with _operator_database(settings) as engine, engine.begin() as connection:
        count = inbox.replay(connection, filters)
    print(f"re-queued {count} events")
    return 0


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from service.devtools import send as sender

    if args.secret is None and not settings.client_secrets:
        local = dev_client_secret(settings.data_dir, create=False)
        if local is not None:
            settings = settings.with_overrides(client_secrets=(local,))
    return sender.run(args, settings)


def _run_uvicorn(settings: Settings, database_url: str, host: str, port: int) -> None:
    import uvicorn

    from service.web.app import create_app

    app = create_app(settings, database_url=database_url)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; exiting through SystemExit
    # instead lets `finally` blocks run (the embedded database stops cleanly, the worker ends).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # proxy_headers off: service.web.app decides itself which peers' X-Forwarded-* to believe,
    # because the signed URL depends on them.
    uvicorn.run(app, host=host, port=port, proxy_headers=False, log_config=None, access_log=False)


def dev_client_secret(data_dir: Path, *, create: bool = True) -> str | None:
    """The local development client secret, kept in DATA_DIR (never printed)."""
    path = data_dir / DEV_SECRET_FILE
    if path.is_file():
        return path.read_text().strip()
    if not create:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(secret)
    log.info("dev_client_secret_created", extra={"path": str(path)})
    return secret


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
