"""`hubspot-webhooks portals`: pause, resume and list portals' processing (service/portals.py).

`portals pause PORTAL [--reason TEXT]` stops every stage working for the portal: its events are
still stored and acknowledged, but they are not applied, its action runs do not run and its
records are not fetched or reconciled. `portals resume PORTAL` lets them go on from where they
stopped and wakes the workers. `portals list` shows the paused portals and every portal with
events waiting, with its backlog.
"""

from __future__ import annotations

import argparse
import json
import sys

from service import fetches, inbox, outbox, portals
from service.ops.commands import operator_database
from service.settings import Settings


def portal_id(value: str) -> int:
    """PORTAL: a HubSpot portal (account) id."""
    try:
        return portals.check_portal(int(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a portal id (a positive integer)"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`portals pause|resume PORTAL`, `portals list`; the command runs `main`."""
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    pause = verbs.add_parser(
        "pause", help="stop applying, acting and fetching for a portal (events are still stored)"
    )
    pause.add_argument("portal", type=portal_id, metavar="PORTAL", help="HubSpot account id")
    pause.add_argument("--reason", help="why: shown by `portals list` and on /admin/portals")
    resume = verbs.add_parser("resume", help="process a paused portal's events again")
    resume.add_argument("portal", type=portal_id, metavar="PORTAL", help="HubSpot account id")
    listing = verbs.add_parser("list", help="paused portals, and portals with events waiting")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run the verb."""
    if args.verb == "pause":
        return pause(settings, args.portal, args.reason)
    if args.verb == "resume":
        return resume(settings, args.portal)
    return show(settings, as_json=args.json)


def pause(settings: Settings, portal: int, reason: str | None) -> int:
    """`portals pause PORTAL`: its events keep being stored; nothing else happens for it."""
    with operator_database(settings) as engine, engine.begin() as connection:
        control = portals.pause(connection, portal, reason)
    assert control.paused_at is not None
    sys.stdout.write(
        f"paused portal {portal} (since {control.paused_at:%Y-%m-%d %H:%M:%S} UTC): its events"
        f" are stored and wait for `hubspot-webhooks portals resume {portal}`\n"
    )
    return 0


def resume(settings: Settings, portal: int) -> int:
    """`portals resume PORTAL`: its waiting events are applied, runs run, records fetched."""
    with operator_database(settings) as engine, engine.begin() as connection:
        if not portals.resume(connection, portal):
            sys.stderr.write(f"portal {portal} was not paused: nothing to do\n")
            return 0
        inbox.wake(connection)
        outbox.wake(connection)
        fetches.wake(connection)
        waiting = portals.backlogs(connection).get(portal)
    due = waiting.due if waiting is not None else 0
    sys.stdout.write(f"resumed portal {portal}: {due} events due, the workers are woken\n")
    return 0


def show(settings: Settings, *, as_json: bool) -> int:
    """`portals list`: paused portals first, then the others with events waiting."""
    with operator_database(settings) as engine, engine.connect() as connection:
        controls = {c.portal_id: c for c in portals.paused(connection)}
        backlog = portals.backlogs(connection)
    empty = portals.Backlog(0, 0, 0.0)
    running = sorted(p for p in backlog if p not in controls)
    if not as_json:
        sys.stdout.write(
            f"{'portal':>12}  {'state':<7} {'since (UTC)':<19} {'due':>8} {'later':>6}"
            f" {'oldest due':>10}  reason\n"
        )
    for portal in [*controls, *running]:
        control, waiting = controls.get(portal), backlog.get(portal, empty)
        since = control.paused_at if control is not None else None
        reason = control.reason if control is not None else None
        if as_json:
            row = {
                "portal_id": portal,
                "paused": control is not None,
                "paused_at": since.isoformat() if since is not None else None,
                "reason": reason,
                "due": waiting.due,
                "later": waiting.later,
                "oldest_due_seconds": round(waiting.oldest_due_seconds, 1),
            }
            sys.stdout.write(json.dumps(row) + "\n")
            continue
        sys.stdout.write(
            f"{portal:>12}  {'running' if since is None else 'paused':<7}"
            f" {f'{since:%Y-%m-%d %H:%M:%S}' if since else '':<19} {waiting.due:>8}"
            f" {waiting.later:>6} {waiting.oldest_due_seconds:>9.0f}s  {reason or ''}\n"
        )
    sys.stderr.write(f"{len(controls)} paused, {len(running)} running with events waiting\n")
    return 0
