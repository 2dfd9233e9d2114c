"""The `hubspot-webhooks` command: parse arguments, build Settings, call one function each."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service import db, fetches, inbox, outbox
from service.devtools import receiver, send
from service.hubspot.reconcile import OBJECT_TYPES
from service.logs import configure_logging
from service.models import INBOX_STATUSES
from service.ops import arguments, commands, doctor, journal, portals, purge, startup, tokenkeys
from service.ops import subscriptions as subs
from service.rules.language import RuleError
from service.settings import WEBHOOK_PATH, Settings, SettingsError
from service.web import server
from service.worker import process


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `hubspot-webhooks` and `python -m service`."""
    try:
        code = _run(_parser().parse_args(argv))
        sys.stdout.flush()  # inside the try, so a reader that went away (`| head`) is seen
    except BrokenPipeError:  # the signal module docs' recipe: no traceback, exit 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def _run(args: argparse.Namespace) -> int:
    if args.unconfigured is not None:  # a command that reports a bad configuration itself
        return int(args.unconfigured(args))
    try:
        settings = startup.local_token_key(Settings.from_env())
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


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "json")
    if settings.database_url is None:
        raise SettingsError(
            "DATABASE_URL is not set: `serve` needs a database (use `dev` for an embedded one)"
        )
    settings.require_client_secret()
    startup.check_serve(settings)  # its host, and a public app's token key and redirect URL
    process.load_rules(settings)  # refuse to start with an invalid rules file
    server.run(settings, settings.database_url, args.host, args.port or settings.port)
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "console")
    port = args.port or settings.port
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104
    settings = startup.dev_settings(settings, host, port)
    with db.database_url_for(settings.database_url, settings.data_dir) as url:
        db.migrate(url)
        local = f"http://{host}:{port}{WEBHOOK_PATH}"
        public = settings.webhook_public_url or "(set WEBHOOK_PUBLIC_URL for ngrok)"
        print(
            f"\n  Webhook URL:  {local}\n"
            f"  Public URL:   {public}\n"
            f"  Try it:       hubspot-webhooks send contact.creation --url {local}\n",
            file=sys.stderr,
        )
        with process.in_background(settings, url):
            server.run(settings, url, args.host, port)
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
    startup.check_worker(settings)  # a public app's token key
    if not args.drain:
        process.run(settings)
        return 0
    drained = process.drain(settings)
    print(f"applied {drained.applied} events", file=sys.stderr)
    if drained.fetched is not None:
        print(f"fetched {drained.fetched} records", file=sys.stderr)
    print(f"ran {drained.ran} actions", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubspot-webhooks",
        description="Receive HubSpot webhooks durably, exactly once, and mirror the CRM.",
    )
    parser.set_defaults(unconfigured=None)  # set by commands that need no valid Settings
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the web server (uses DATABASE_URL)")
    serve.add_argument("--host", default="0.0.0.0", help="interface to bind (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=arguments.port, help="port (default $PORT, else 8000)")
    serve.set_defaults(run=_serve)

    dev = sub.add_parser(
        "dev", help="local development: embedded database if needed, migrate, serve"
    )
    dev.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    dev.add_argument("--port", type=arguments.port, help="port (default $PORT, else 8000)")
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
    purging = sub.add_parser("purge", help="delete dead (or failed) inbox events older than AGE")
    purge.add_arguments(purging)
    purging.set_defaults(run=purge.main)
    portals.add_arguments(sub.add_parser("portals", help="pause, resume or list portals"))
    subs.add_arguments(sub.add_parser("subscriptions", help="journal subscriptions as code"))
    journal.add_arguments(sub.add_parser("journal", help="the Webhooks Journal: status, replay"))
    keys = sub.add_parser("rotate-token-key", help="re-encrypt OAuth tokens with the first key")
    tokenkeys.add_arguments(keys)
    keys.set_defaults(run=lambda a, s: tokenkeys.rotate(s))
    doc = sub.add_parser("doctor", help="check configuration, database, HubSpot and workers")
    doc.add_argument("--json", action="store_true", help="print one JSON object")
    doc.add_argument("--self-test", action="store_true", help="POST a signed test event too")
    doc.set_defaults(unconfigured=lambda a: doctor.main(as_json=a.json, self_test=a.self_test))

    rcv = sub.add_parser(
        "receiver", help="a local endpoint for the webhook action: verifies and prints deliveries"
    )
    rcv.add_argument("--port", type=arguments.port, default=9000, help="port (default 9000)")
    rcv.add_argument(
        "--secret", help="whsec_... secret (default: DATA_DIR/receiver-secret, created once)"
    )
    rcv.set_defaults(run=lambda a, s: receiver.serve(a.port, a.secret, s))

    sender = sub.add_parser("send", help="sign and POST sample or given events to a webhook URL")
    send.add_arguments(sender)
    sender.set_defaults(run=send.main)
    return parser


def _operator_commands(sub: Any) -> None:
    """Commands for looking at and steering a running system."""
    events = sub.add_parser("events", help="list inbox events, or show one: events [show] ID")
    events.add_argument("show", nargs="*", metavar="ID", help="show this event in full")
    _add_filters(events)
    events.add_argument("--limit", type=int, default=50, help="rows to list (default 50)")
    events.add_argument("--json", action="store_true", help="print JSON lines")
    events.set_defaults(
        run=lambda a, s: commands.events(s, a.show, _filters(a), limit=a.limit, as_json=a.json)
    )

    replay = sub.add_parser(
        "replay", help="re-queue events by id, status, type or time (dead and ignored included)"
    )
    _add_filters(replay)
    replay.add_argument("--id", type=int, action="append", default=[], help="inbox id (repeatable)")
    replay.add_argument("--all", action="store_true", help="re-queue every event (no filter)")
    replay.set_defaults(run=lambda a, s: commands.replay_events(s, _filters(a), every=a.all))

    mirror = sub.add_parser("mirror", help="show mirrored records from the hubspot_* views")
    mirror.add_argument("view", choices=sorted(commands.MIRROR_VIEWS), help="which view")
    mirror.add_argument("--portal", type=int, help="portal (HubSpot account) id")
    mirror.add_argument("--object-id", type=int, help="object id (from or to, for associations)")
    mirror.add_argument("--limit", type=int, default=20, help="rows (default 20, newest first)")
    mirror.set_defaults(
        run=lambda a, s: commands.show_mirror(
            s, a.view, portal=a.portal, object_id=a.object_id, limit=a.limit
        )
    )

    reconcile = sub.add_parser(
        "reconcile", help="pull records modified since a time from HubSpot's API into the mirror"
    )
    reconcile.add_argument("--portal", type=int, action="append", default=[], help="repeatable")
    reconcile.add_argument(
        "--object", default="all", choices=[*OBJECT_TYPES, "all"], help="default all"
    )
    reconcile.add_argument(
        "--since",
        type=arguments.when,
        help="modified at or after (ISO time or 30m, 2h, 1d); default: the last successful"
        " reconcile minus RECONCILE_LOOKBACK, or everything the first time",
    )
    reconcile.set_defaults(
        run=lambda a, s: commands.run_reconcile(
            s, portals=a.portal, object_type=a.object, since=a.since
        )
    )

    hydration = sub.add_parser(
        "hydration", help="list records waiting to be fetched from HubSpot, and failed fetches"
    )
    hydration.add_argument("--status", choices=fetches.STATUSES, help="default: both")
    hydration.add_argument("--portal", type=int, help="portal (HubSpot account) id")
    hydration.add_argument("--type", help="object type, e.g. contacts")
    hydration.add_argument("--limit", type=int, default=50, help="rows (default 50)")
    hydration.add_argument(
        "--retry", action="store_true", help="re-queue the matching requests for a fetch now"
    )
    hydration.set_defaults(
        run=lambda a, s: commands.hydration(
            s, fetches.Filters(a.status, a.portal, a.type), limit=a.limit, retry=a.retry
        )
    )

    rules = sub.add_parser("rules", help="rules: `rules check [FILE]` validates offline")
    rules.add_argument("verb", choices=["check"], help="what to do")
    rules.add_argument("file", nargs="?", type=Path, help="rules file (default $RULES_FILE)")
    rules.add_argument("--subscriptions", type=Path, help="warn on events none subscribe to")
    rules.set_defaults(run=commands.rules_check)

    runs = sub.add_parser(
        "actions", help="list action runs, `actions show ID`, or `actions replay ...`"
    )
    runs.add_argument("words", nargs="*", metavar="show ID | replay", help="what to do")
    runs.add_argument("--status", action="append", default=[], choices=outbox.RUN_STATUSES)
    runs.add_argument("--rule", help="rule name")
    runs.add_argument("--portal", type=int, help="portal (HubSpot account) id")
    runs.add_argument(
        "--since", type=arguments.when, help="created at or after: ISO time or 30m, 2h, 1d"
    )
    runs.add_argument("--id", type=int, action="append", default=[], help="run id (repeatable)")
    runs.add_argument("--all", action="store_true", help="with replay: every run")
    runs.add_argument("--limit", type=int, default=50, help="rows to list (default 50)")
    runs.set_defaults(
        run=lambda a, s: commands.actions(
            s,
            a.words,
            outbox.RunFilters(tuple(a.id), tuple(a.status), a.rule, a.portal, a.since),
            limit=a.limit,
            every=a.all,
        )
    )


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status", action="append", default=[], choices=INBOX_STATUSES, help="repeatable"
    )
    parser.add_argument("--type", help="subscription type, e.g. contact.propertyChange")
    parser.add_argument("--portal", type=int, help="portal (HubSpot account) id")
    parser.add_argument("--object-id", type=int, help="HubSpot object id")
    parser.add_argument(
        "--since", type=arguments.when, help="received at or after: ISO time or 30m, 2h, 1d"
    )
    parser.add_argument(
        "--until", type=arguments.when, help="received before: ISO time or 30m, 2h, 1d"
    )


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
