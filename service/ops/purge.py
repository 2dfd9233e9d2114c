"""`hubspot-webhooks purge --dead --older-than 30d`: delete dead (or failed) inbox events on
purpose; with `--actions`, dead (or failed) action runs instead.

Retention (INBOX_RETENTION) never drops a pending, failed or dead event: they wait to be applied,
retried, replayed or looked at. This command is how an operator lets dead ones go (and, with
`--failed`, ones still being retried). It deletes in batches of `BATCH` rows, each its own short
transaction found through an index, so ingest and the workers go on meanwhile and the cost
follows the rows deleted, not the table's size. ACTION_RETENTION likewise keeps dead runs until
replayed; `--actions` lets them go (a purged run is forgotten: replaying its event fires it again).
"""

from __future__ import annotations

import argparse
import sys

from service import inbox, outbox
from service.ops import arguments
from service.ops.commands import operator_database
from service.settings import Settings

BATCH = 5000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options: which statuses, and how old."""
    parser.add_argument("--dead", action="store_true", help="purge dead events")
    parser.add_argument(
        "--failed", action="store_true", help="purge failed events (still being retried)"
    )
    parser.add_argument(
        "--actions",
        action="store_true",
        help="purge action runs (created before AGE) instead of inbox events",
    )
    parser.add_argument(
        "--older-than",
        type=arguments.when,
        required=True,
        metavar="AGE",
        help="received (action runs: created) before: an age (30d, 12h) or an ISO time",
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    """`purge`: delete the chosen events (or action runs) from before --older-than; prints how
    many."""
    statuses = [s for s in inbox.PURGEABLE_STATUSES if getattr(args, s)]
    noun, when = ("action runs", "created") if args.actions else ("events", "received")
    if not statuses:
        sys.stderr.write(f"hubspot-webhooks purge: say which {noun}: --dead, --failed or both\n")
        return 2
    total = 0
    with operator_database(settings) as engine:
        while True:
            with engine.begin() as connection:
                if args.actions:
                    deleted = outbox.purge(
                        connection, statuses, created_before=args.older_than, limit=BATCH
                    )
                else:
                    deleted = inbox.purge(
                        connection, statuses, received_before=args.older_than, limit=BATCH
                    )
            total += deleted
            if deleted < BATCH:
                break
    before = args.older_than.isoformat(timespec="seconds")
    sys.stdout.write(f"purged {total} {' and '.join(statuses)} {noun} {when} before {before}\n")
    return 0
