"""`hubspot-webhooks journal`: the Webhooks Journal reader's state, and replaying kept files.

`journal status [--json]` shows each journal read (service/journal.py): the offset stored up
to and when, how far behind the journal's latest entry the last check saw it, the last file
fetched, the entries kept (stored and failed), open gaps and errors.

`journal replay [--failed | --offset X | --since AGE] [--journal NAME]` parses the kept files
again with the current parser (service/journal_format): events not stored yet are stored, and
stored events whose payload the parser now makes differently get the new payload and are due
again (`inbox.replay_payloads`), so a parser fix re-applies them. Action runs are unique per
(inbox event, rule, action): nothing fires twice. Each entry replayed is marked stored, with
the time. An entry that still fails to parse stays as it was (the command exits 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service import inbox, journal, journal_format
from service.ops.arguments import when
from service.ops.commands import operator_database
from service.settings import Settings

REPLAY_LIMIT = 10_000  # entries per `journal replay` run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`journal status [--json]`, `journal replay [--failed|--offset X|--since AGE]`."""
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    status = verbs.add_parser("status", help="offset, lag behind latest, last file, errors")
    status.add_argument("--json", action="store_true", help="print one JSON object per journal")
    replay = verbs.add_parser("replay", help="parse kept journal files again and store events")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="the entries that failed to parse")
    which.add_argument("--offset", action="append", metavar="X", help="this entry (repeatable)")
    which.add_argument(
        "--since", type=when, metavar="AGE", help="entries fetched since (30m, 2d, ISO time)"
    )
    replay.add_argument("--journal", metavar="NAME", help="global or local:PORTAL (default: all)")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run the verb."""
    if args.verb == "status":
        return show(settings, as_json=args.json)
    return replay(
        settings,
        journal_name=args.journal,
        failed=args.failed,
        offsets=tuple(args.offset or ()),
        since=args.since,
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _as_json(found: journal.JournalStatus) -> dict[str, Any]:
    c, last = found.cursor, found.last_entry
    return {
        "journal": c.journal,
        "offset": c.current_offset,
        "entry_at": _time(c.entry_at),
        "last_event_ms": c.last_event_ms,
        "latest_offset": c.latest_offset,
        "behind": c.behind,
        "checked_at": _time(c.checked_at),
        "last_file": None
        if last is None
        else {
            "offset": last.entry_offset,
            "fetched_at": _time(last.fetched_at),
            "bytes": last.file_bytes,
            "events": last.events,
            "stored": last.stored,
            "status": last.status,
        },
        "entries_stored": found.entries_stored,
        "entries_failed": found.entries_failed,
        "open_gaps": found.open_gaps,
        "oldest_open_gap_at": _time(found.oldest_open_gap_at),
        "errors": c.errors,
        "last_error": c.last_error,
        "last_error_at": _time(c.last_error_at),
    }


def _when(value: datetime | None) -> str:
    return "never" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def show(settings: Settings, *, as_json: bool) -> int:
    """`journal status`: every journal read so far (nothing before the first read)."""
    with operator_database(settings) as engine, engine.connect() as connection:
        found = journal.status(connection)
        gaps = journal.open_gaps(connection)
        failed = journal.entries(connection, None, "failed", 20, with_files=False)
    if as_json:
        for item in found:
            sys.stdout.write(json.dumps(_as_json(item)) + "\n")
        return 0
    if not found:
        sys.stdout.write(
            f"no journal read yet (HUBSPOT_EVENT_SOURCE={settings.event_source}): the workers"
            " read it with HUBSPOT_EVENT_SOURCE=journal or both\n"
        )
        return 0
    for item in found:
        c, last = item.cursor, item.last_entry
        behind = "unknown" if c.behind is None else str(c.behind)
        if c.behind is not None and c.behind >= 100:
            behind = "100 or more"
        lines = [
            f"journal {c.journal}",
            f"  offset:        {c.current_offset or '(not started)'} (stored {_when(c.entry_at)})",
            f"  behind latest: {behind} entries (checked {_when(c.checked_at)};"
            f" latest {c.latest_offset or '-'})",
            "  last file:     -"
            if last is None
            else f"  last file:     {last.entry_offset} {last.status}, {last.file_bytes} bytes,"
            f" {last.events} events ({last.stored} new), fetched {_when(last.fetched_at)}",
            f"  entries kept:  {item.entries_stored} stored, {item.entries_failed} failed",
            f"  open gaps:     {item.open_gaps}",
            f"  errors:        {c.errors}"
            + ("" if c.last_error is None else f" (last {_when(c.last_error_at)}: {c.last_error})"),
        ]
        for gap in (g for g in gaps if g.journal == c.journal):
            note = f"; reconcile failed: {gap.reconcile_error}" if gap.reconcile_error else ""
            lines.append(
                f"    gap {gap.id}: {gap.reason} detected {_when(gap.detected_at)},"
                f" events since {gap.since_ms} ms missed{note}"
            )
        for bad in (e for e in failed if e.journal == c.journal):
            lines.append(f"    failed entry {bad.entry_offset}: {bad.error}")
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


def replay(
    settings: Settings,
    *,
    journal_name: str | None,
    failed: bool,
    offsets: tuple[str, ...],
    since: datetime | None,
) -> int:
    """`journal replay`: parse the chosen entries' kept files again and store their events."""
    with operator_database(settings) as engine:
        with engine.connect() as connection:
            chosen = journal.entries(
                connection,
                journal_name,
                "failed" if failed else None,
                REPLAY_LIMIT,
                offsets=offsets,
                since=since,
                with_files=False,
            )
        totals = {"entries": 0, "stored": 0, "updated": 0, "failed": 0, "purged": 0}
        for entry in chosen:
            outcome, stored, updated = _replay_entry(engine, entry)
            totals[outcome] += 1
            totals["stored"] += stored
            totals["updated"] += updated
    sys.stdout.write(
        f"replayed {totals['entries']} journal entries: {totals['stored']} events stored,"
        f" {totals['updated']} events updated and due again; {totals['failed']} still failing,"
        f" {totals['purged']} without a kept file\n"
    )
    return 1 if totals["failed"] else 0


def _replay_entry(engine: sa.Engine, entry: journal.Entry) -> tuple[str, int, int]:
    """One entry, in one transaction: what happened to it (a key of the totals), the events
    stored and the events updated."""
    with engine.begin() as connection:
        [kept] = journal.entries(connection, entry.journal, offsets=(entry.entry_offset,))
        if kept.file is None:
            return "purged", 0, 0
        try:
            parsed = journal_format.read_file(
                journal_format.decompress(kept.file), entry_offset=kept.entry_offset
            )
        except journal_format.InvalidJournalFile as exc:
            sys.stderr.write(f"entry {kept.entry_offset} of {kept.journal} still fails: {exc}\n")
            return "failed", 0, 0
        result = inbox.record_events(connection, parsed.json_text, source=inbox.JOURNAL_SOURCE)
        updated = inbox.replay_payloads(connection, parsed.json_text)
        if result.stored:
            inbox.wake(connection)
        journal.mark_replayed(
            connection,
            kept.journal,
            kept.entry_offset,
            events=len(parsed.events),
            stored=result.stored,
            contacts=parsed.contacts,
        )
    sys.stdout.write(
        f"entry {kept.entry_offset} of {kept.journal}: {len(parsed.events)} events,"
        f" {result.stored} stored, {updated} updated\n"
    )
    return "entries", result.stored, updated
