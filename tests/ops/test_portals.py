"""service.ops.portals as an operator runs it: `portals pause|resume|list` in a subprocess."""

from __future__ import annotations

import json
import subprocess

import psycopg
import sqlalchemy as sa

from service import db, fetches, inbox, outbox
from service.rules.registry import Registry
from service.worker.apply import Worker
from tests.factories import PORTAL, numbered_event
from tests.support import Store, inbox_statuses, run_cli

OTHER = 4242


def portals_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service portals ARGS` against the test database."""
    return run_cli("portals", *args, env={"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"})


def test_pause_list_and_resume_a_portal_while_its_events_keep_arriving(
    store: Store, clean_db: str, engine: sa.Engine
) -> None:
    paused = portals_cli(clean_db, "pause", str(PORTAL), "--reason", "bulk import")
    assert paused.returncode == 0, paused.stderr
    assert f"paused portal {PORTAL}" in paused.stdout
    store([numbered_event(n) for n in (1, 2, 3)] + [numbered_event(4, portalId=OTHER)])
    worker = Worker(engine, batch_size=500, max_attempts=3, handlers=Registry())
    assert worker.drain() == 1  # only the other portal's event

    listing = portals_cli(clean_db, "list")
    assert listing.returncode == 0, listing.stderr
    header, line = listing.stdout.splitlines()  # the other portal has nothing waiting
    assert header.split()[:3] == ["portal", "state", "since"]
    assert line.split()[:2] == [str(PORTAL), "paused"]
    assert line.split()[4] == "3"  # events due
    assert line.endswith("bulk import")
    assert "1 paused, 0 running with events waiting" in listing.stderr
    rows = [
        json.loads(line) for line in portals_cli(clean_db, "list", "--json").stdout.splitlines()
    ]
    assert [(r["portal_id"], r["paused"], r["due"], r["reason"]) for r in rows] == [
        (PORTAL, True, 3, "bulk import")
    ]

    resumed = portals_cli(clean_db, "resume", str(PORTAL))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed portal {PORTAL}: 3 events due" in resumed.stdout
    assert worker.drain() == 3
    assert inbox_statuses(engine) == ["done"] * 4
    again = portals_cli(clean_db, "resume", str(PORTAL))
    assert (again.returncode, again.stdout) == (0, "")
    assert "was not paused" in again.stderr


def test_resume_wakes_the_apply_act_and_hydrate_stages(clean_db: str) -> None:
    assert portals_cli(clean_db, "pause", str(PORTAL)).returncode == 0
    with psycopg.connect(db.libpq_url(clean_db), autocommit=True) as listener:
        for channel in (inbox.INBOX_CHANNEL, outbox.ACTIONS_CHANNEL, fetches.CHANNEL):
            listener.execute(f"LISTEN {channel}")

        assert portals_cli(clean_db, "resume", str(PORTAL)).returncode == 0

        channels = {n.channel for n in listener.notifies(timeout=5, stop_after=3)}
    assert channels == {inbox.INBOX_CHANNEL, outbox.ACTIONS_CHANNEL, fetches.CHANNEL}


def test_a_portal_id_hubspot_cannot_have_issued_is_refused(clean_db: str) -> None:
    for bad in ("0", "-1", "abc", str(2**63)):
        refused = portals_cli(clean_db, "pause", bad)
        assert refused.returncode == 2
        assert "is not a portal id" in refused.stderr
