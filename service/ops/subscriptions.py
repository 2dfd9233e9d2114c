"""`hubspot-webhooks subscriptions plan|apply|list`: the app's journal subscriptions as code.

`plan [FILE]` compares the subscriptions FILE declares (SUBSCRIPTIONS_FILE by default; the
format is in subscriptions_file.py) with the app's journal subscriptions in HubSpot, by
`Subscription.identity`: `+ create` what is declared and missing, `- delete` what exists and is
not declared, `= N unchanged`. Its exit code is terraform's `plan -detailed-exitcode`: 0 nothing
to do, 2 changes pending, 1 an error (an invalid file, no credentials, HubSpot refusing).

`apply [FILE] [--yes]` plans, asks (a terminal must answer `yes`; without a terminal it needs
`--yes`), then creates before it deletes, so a changed subscription is never missing in between.
HubSpot calls its POST an upsert without saying what it matches on: a subscription the create
answered with (updated in place) is not deleted afterwards. A second apply finds nothing to do.
Exit 0 when applied or nothing to do, 1 on an error or a refusal.

`list [--json]` shows the journal subscriptions; `list --legacy` a legacy public app's v3 push
subscriptions (HUBSPOT_APP_ID and HUBSPOT_DEVELOPER_API_KEY, which is never printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.events import TYPE_BY_ID
from service.hubspot import appauth
from service.hubspot import subscriptions as journal
from service.hubspot.appauth import AppApi
from service.hubspot.sdk import HubSpotError
from service.hubspot.subscriptions import Subscription
from service.ops.subscriptions_file import SubscriptionsFileError, load_file
from service.settings import Settings

PROG = "hubspot-webhooks subscriptions"


class MissingCredentials(Exception):
    """The command needs settings that are not set (the message names them)."""


@dataclass
class Plan:
    """What `apply` would change: declared and missing, existing and undeclared, the rest."""

    create: list[Subscription] = field(default_factory=list)
    delete: list[Subscription] = field(default_factory=list)
    unchanged: list[Subscription] = field(default_factory=list)
    unmanaged: list[Subscription] = field(default_factory=list)  # types a file cannot declare

    @property
    def changes(self) -> bool:
        """Whether applying would create or delete anything."""
        return bool(self.create or self.delete)


def diff(desired: Sequence[Subscription], actual: Sequence[Subscription]) -> Plan:
    """Match declared to existing subscriptions by identity (a duplicate existing one is
    deleted); existing ones of a type the file cannot declare are left alone."""
    plan = Plan()
    pool: dict[tuple[Any, ...], list[Subscription]] = {}
    for existing in actual:
        if existing.type not in journal.TYPES:
            plan.unmanaged.append(existing)
        else:
            pool.setdefault(existing.identity(), []).append(existing)
    for wanted in desired:
        matches = pool.get(wanted.identity())
        if matches:
            plan.unchanged.append(matches.pop(0))
        else:
            plan.create.append(wanted)
    plan.delete = [s for left in pool.values() for s in left]
    return plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`subscriptions plan|apply [FILE]`, `subscriptions list`; the command runs `main`."""
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    file_help = "subscriptions TOML (default $SUBSCRIPTIONS_FILE)"
    plan = verbs.add_parser(
        "plan", help="show what apply would change (exit 0: nothing, 2: changes pending)"
    )
    plan.add_argument("file", nargs="?", type=Path, help=file_help)
    apply = verbs.add_parser("apply", help="create and delete subscriptions to match the file")
    apply.add_argument("file", nargs="?", type=Path, help=file_help)
    apply.add_argument("--yes", action="store_true", help="apply without asking")
    listing = verbs.add_parser("list", help="the app's journal (or --legacy v3) subscriptions")
    listing.add_argument(
        "--legacy", action="store_true", help="a legacy public app's v3 webhook subscriptions"
    )
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run the verb; every error is one line (or the file's problems) and exit code 1."""
    try:
        if args.verb == "list":
            return show(settings, legacy=args.legacy, as_json=args.json)
        path = args.file or settings.subscriptions_file
        if path is None:
            raise MissingCredentials(f"{args.verb}: give a FILE or set SUBSCRIPTIONS_FILE")
        if args.verb == "plan":
            return plan_file(settings, path)
        return apply_file(settings, path, yes=args.yes)
    except SubscriptionsFileError as exc:
        _err(f"{PROG}: invalid subscriptions file:")
        for problem in exc.problems:
            _err(f"  {problem}")
    except (MissingCredentials, HubSpotError) as exc:
        _err(f"{PROG}: {exc}")
    return 1


def app_api(settings: Settings) -> AppApi:
    """The app's API with the subscription scopes, or MissingCredentials naming what to set."""
    api = appauth.from_settings(settings, journal.SCOPES)
    if api is None:
        raise MissingCredentials(
            "HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET must be set: journal subscriptions"
            " are managed with the app's client-credentials token"
        )
    return api


def make_plan(settings: Settings, path: Path) -> tuple[Plan, AppApi]:
    """Read the file (offline first: an invalid file calls nothing), then HubSpot's state."""
    declared, warnings = load_file(path)
    for warning in warnings:
        _err(warning)
    api = app_api(settings)
    return diff([d.subscription for d in declared], journal.list_subscriptions(api)), api


def plan_file(settings: Settings, path: Path) -> int:
    """`subscriptions plan`: 0 nothing to do, 2 changes pending."""
    plan, _ = make_plan(settings, path)
    _print_plan(plan)
    return 2 if plan.changes else 0


def apply_file(settings: Settings, path: Path, *, yes: bool) -> int:
    """`subscriptions apply`: plan, confirm, create, then delete."""
    plan, api = make_plan(settings, path)
    _print_plan(plan)
    if not plan.changes:
        return 0
    if not yes:
        if not sys.stdin.isatty():
            _err(f"{PROG} apply: not asking without a terminal; pass --yes to apply")
            return 1
        sys.stdout.write("Apply these changes? Only 'yes' applies: ")
        sys.stdout.flush()
        if sys.stdin.readline().strip() != "yes":
            _err("apply cancelled: nothing changed")
            return 1
    kept: set[int] = set()
    for wanted in plan.create:
        made = journal.create(api, wanted)
        if made.id is not None:
            kept.add(made.id)
        _out(f"created #{made.id} {describe(made)}")
    deleted = 0
    for old in plan.delete:
        if old.id is None or old.id in kept:
            _out(f"kept #{old.id}: HubSpot updated it in place")
            continue
        if journal.delete(api, old.id):
            deleted += 1
            _out(f"deleted #{old.id} {describe(old)}")
        else:
            _out(f"#{old.id} was already gone")
    _out(
        f"Apply complete: {len(plan.create)} created, {deleted} deleted,"
        f" {len(plan.unchanged)} unchanged."
    )
    return 0


def show(settings: Settings, *, legacy: bool, as_json: bool) -> int:
    """`subscriptions list [--legacy] [--json]`: a table, or JSON lines."""
    if legacy:
        return _show_legacy(settings, as_json=as_json)
    found = journal.list_subscriptions(app_api(settings))
    if as_json:
        _out(*(json.dumps(s.as_dict(), ensure_ascii=False) for s in found))
    else:
        rows = [
            [
                str(s.id),
                s.type,
                "" if s.portal_id is None else str(s.portal_id),
                _object_name(s.object_type_id or s.event_type_id),
                ",".join(a.lower() for a in s.actions),
                ",".join(s.properties),
                "; ".join(" AND ".join(c.text() for c in f) for f in s.filters),
            ]
            for s in found
        ]
        header = ["ID", "TYPE", "PORTAL", "OBJECT", "ACTIONS", "PROPERTIES", "FILTERS"]
        _out(*_table(header, rows))
    _err(f"{len(found)} journal subscriptions")
    return 0


def _show_legacy(settings: Settings, *, as_json: bool) -> int:
    if settings.app_id is None or settings.developer_api_key is None:
        raise MissingCredentials(
            "list --legacy needs HUBSPOT_APP_ID and HUBSPOT_DEVELOPER_API_KEY (the developer"
            " account's API key) to read /webhooks/v3/{appId}/subscriptions"
        )
    found = journal.legacy_list(settings.api_base_url, settings.app_id, settings.developer_api_key)
    if as_json:
        _out(*(json.dumps(s.as_dict(), ensure_ascii=False) for s in found))
    else:
        rows = [
            [s.id, s.event_type, s.property_name or "", s.object_type_id or "", str(s.active)]
            for s in found
        ]
        _out(*_table(["ID", "EVENT TYPE", "PROPERTY", "OBJECT TYPE", "ACTIVE"], rows))
    _err(f"{len(found)} v3 webhook subscriptions of app {settings.app_id}")
    return 0


def describe(subscription: Subscription) -> str:
    """One line for people: type, object, portal, actions, properties, filters."""
    s = subscription
    parts = [s.type, _object_name(s.object_type_id or s.event_type_id)]
    if s.portal_id is not None:
        parts.append(f"portal {s.portal_id}")
    text = " ".join(p for p in parts if p)
    details = []
    if s.actions:
        details.append(", ".join(a.lower() for a in s.actions))
    for label, values in (
        ("properties", s.properties),
        ("associated", tuple(_object_name(t) for t in s.associated_object_type_ids)),
        ("lists", tuple(map(str, s.list_ids))),
        ("objects", tuple(map(str, s.object_ids))),
    ):
        if values:
            details.append(f"{label} {', '.join(values)}")
    for conditions in s.filters:
        details.append("filter " + " AND ".join(c.text() for c in conditions))
    return f"{text}: {'; '.join(details)}" if details else text


def _print_plan(plan: Plan) -> None:
    lines = [f"+ create {describe(s)}" for s in plan.create]
    lines += [f"- delete #{s.id} {describe(s)}" for s in plan.delete]
    lines += [f"~ leave #{s.id} {s.type}: a type the file cannot declare" for s in plan.unmanaged]
    lines.append(f"= {len(plan.unchanged)} unchanged")
    _out(*lines)
    if plan.changes:
        _out(f"Plan: {len(plan.create)} to create, {len(plan.delete)} to delete.")
    else:
        _out("No changes: HubSpot's subscriptions match the file.")


def _object_name(type_id: str | None) -> str:
    if type_id is None:
        return ""
    name = TYPE_BY_ID.get(type_id)
    return f"{name} ({type_id})" if name else type_id


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


def _out(*lines: str) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
