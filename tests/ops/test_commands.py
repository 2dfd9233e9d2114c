"""service.ops.commands as a user runs them: `events` and `replay` on the inbox, `rules check`.

Each command runs as `python -m service ...` in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import cli as service_cli
from service import inbox
from service.events import Event, Kind
from service.rules.registry import Registry
from service.worker.apply import Worker
from tests.factories import change, hs
from tests.support import (
    EXAMPLE_RULES,
    INVALID_RULES,
    ROOT,
    empty_database,
    invalid_rule_lines,
    run_cli,
    store_events,
)

OTHER_PORTAL = 999

# name -> the event as HubSpot sends it (one object id each); the setup gives each a fate.
ROWS: dict[str, dict[str, Any]] = {
    "created": hs("contact.creation", 101, 1000),
    "changed": change("contact", 102, 1000, "email", "ada@example.com"),
    "failed": hs("deal.creation", 201, 1000),
    "dead": hs("company.creation", 301, 1000),
    "ignored": hs("conversation.creation", 401, 1000),
    "other_portal": hs("contact.creation", 103, 1000, portalId=OTHER_PORTAL),
    "old": hs("contact.creation", 104, 1000),
}
ALL = frozenset(ROWS)


def cli(*args: str, database_url: str) -> subprocess.Popen[str]:
    """Start `python -m service ARGS` with only DATABASE_URL (plus PATH/HOME) set."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    return subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        env={**base, "DATABASE_URL": database_url},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Wait for a started command and collect its output."""
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run one command to completion."""
    return finish(cli(*args, database_url=database_url))


def run_all(
    commands: Sequence[Sequence[str]], database_url: str
) -> list[subprocess.CompletedProcess[str]]:
    """Run read-only commands side by side (each one is a Python start-up)."""
    started = [cli(*c, database_url=database_url) for c in commands]
    return [finish(p) for p in started]


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The rows `events --json` printed."""
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


class Inbox:
    """The rows the setup made, by name, and ways to look at them."""

    def __init__(self, url: str, engine: sa.Engine) -> None:
        self.url = url
        self.engine = engine
        with engine.connect() as connection:
            by_object = {
                r.object_id: r.id
                for r in connection.execute(sa.text("SELECT object_id, id FROM inbox_events"))
            }
        self.ids = {name: by_object[event["objectId"]] for name, event in ROWS.items()}
        self.names = {row_id: name for name, row_id in self.ids.items()}

    def rows(self) -> dict[str, Any]:
        """Every row, by name."""
        with self.engine.connect() as connection:
            return {
                self.names[r.id]: r
                for r in connection.execute(sa.text("SELECT * FROM inbox_events"))
            }

    def statuses(self) -> dict[str, str]:
        """Every row's status, by name."""
        return {name: r.status for name, r in self.rows().items()}

    def named(self, rows: list[dict[str, Any]]) -> set[str]:
        """The names of listed rows."""
        return {self.names[r["id"]] for r in rows}


def failing_registry() -> Registry:
    """User handlers that fail for deals and companies (a downstream outage)."""
    handlers = Registry()

    @handlers.on("deals", Kind.CREATION)
    def notify_sales(event: Event, session: Session) -> None:
        raise RuntimeError("sales webhook answered 500")

    @handlers.on("companies", Kind.CREATION)
    def enrich_company(event: Event, session: Session) -> None:
        raise RuntimeError("enrichment API timed out")

    return handlers


@pytest.fixture
def rows(clean_db: str, engine: sa.Engine) -> Inbox:
    """Seven events: done, failed, dead, ignored, another portal and one received 2 h ago."""
    assert store_events(clean_db, list(ROWS.values())) == len(ROWS)
    handlers = failing_registry()
    Worker(engine, max_attempts=3, handlers=handlers).drain()
    made = Inbox(clean_db, engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE inbox_events SET next_attempt_at = now() WHERE id = :id"),
            {"id": made.ids["dead"]},
        )
        connection.execute(
            sa.text(
                "UPDATE inbox_events SET received_at = now() - interval '2 hours' WHERE id = :id"
            ),
            {"id": made.ids["old"]},
        )
    # A second real failure at max_attempts=2: the company event is dead.
    Worker(engine, max_attempts=2, handlers=handlers).drain()
    assert made.statuses() == {
        "created": "done",
        "changed": "done",
        "failed": "failed",
        "dead": "dead",
        "ignored": "ignored",
        "other_portal": "done",
        "old": "done",
    }
    return made


# --- events ----------------------------------------------------------------------------------


def test_events_lists_rows_newest_first_with_the_errors_of_failed_and_dead_ones(
    rows: Inbox,
) -> None:
    result = run("events", database_url=rows.url)

    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split()[:3] == ["id", "status", "att"]
    listed = [int(line.split()[0]) for line in lines if not line.lstrip().startswith("error:")]
    assert listed == sorted(rows.ids.values(), reverse=True)
    errors = [line.strip() for line in lines if line.lstrip().startswith("error:")]
    assert sorted(errors) == [
        "error: RuntimeError: enrichment API timed out",
        "error: RuntimeError: sales webhook answered 500",
    ]
    dead_line = next(line for line in lines if line.split()[0] == str(rows.ids["dead"]))
    assert dead_line.split()[1:4] == ["dead", "2", "company.creation"]
    assert "7 events" in result.stderr


def test_events_filters_by_status_type_portal_object_and_age_as_json_lines(rows: Inbox) -> None:
    cases: list[tuple[list[str], set[str]]] = [
        (["--status", "failed", "--status", "dead"], {"failed", "dead"}),
        (["--type", "contact.creation"], {"created", "other_portal", "old"}),
        (["--portal", str(OTHER_PORTAL)], {"other_portal"}),
        (["--object-id", "102"], {"changed"}),
        (["--type", "contact.creation", "--since", "1h"], {"created", "other_portal"}),
    ]
    results = run_all([["events", "--json", *args] for args, _ in cases], rows.url)

    for (args, expected), result in zip(cases, results, strict=True):
        assert rows.named(json_lines(result)) == expected, args
    dead = next(r for r in json_lines(results[0]) if r["id"] == rows.ids["dead"])
    assert dead["status"] == "dead"
    assert dead["attempts"] == 2
    assert dead["subscription_type"] == "company.creation"
    assert dead["object_id"] == 301
    assert "enrichment API timed out" in dead["last_error"]
    assert dead["received_at"]
    assert "payload" not in dead


def test_events_shows_one_event_with_its_payload_and_error(rows: Inbox) -> None:
    bare, with_show = run_all(
        [["events", str(rows.ids["dead"])], ["events", "show", str(rows.ids["failed"])]],
        rows.url,
    )

    for result, name, error in (
        (bare, "dead", "RuntimeError: enrichment API timed out"),
        (with_show, "failed", "RuntimeError: sales webhook answered 500"),
    ):
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["id"] == rows.ids[name]
        assert shown["status"] == name
        assert shown["payload"] == ROWS[name]
        assert shown["last_error"].startswith(error)
        assert "Traceback" in shown["last_error"]


def test_events_with_an_unknown_or_malformed_id_fails(rows: Inbox) -> None:
    unknown, malformed, bad_since = run_all(
        [["events", "987654"], ["events", "show", "abc"], ["events", "--since", "yesterday"]],
        rows.url,
    )

    assert unknown.returncode == 1
    assert "no inbox event with id 987654" in unknown.stderr
    assert unknown.stdout == ""
    assert malformed.returncode == 2
    assert "ID must be an inbox id" in malformed.stderr
    assert bad_since.returncode == 2
    assert "'yesterday' is not an ISO time" in bad_since.stderr


# --- replay ----------------------------------------------------------------------------------


def test_replay_dead_requeues_them_and_a_worker_then_applies_them(
    rows: Inbox, engine: sa.Engine
) -> None:
    result = run("replay", "--status", "dead", database_url=rows.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "re-queued 1 events"
    replayed = rows.rows()["dead"]
    assert (replayed.status, replayed.attempts, replayed.last_error) == ("pending", 0, None)
    assert rows.statuses()["failed"] == "failed", "only what was asked for is re-queued"

    # The enrichment API is back: the handler no longer raises.
    fixed = Registry()

    @fixed.on("companies", Kind.CREATION)
    def enrich_company(event: Event, session: Session) -> None:
        """Works now."""

    assert Worker(engine, handlers=fixed).drain() == 1
    done = rows.rows()["dead"]
    assert (done.status, done.attempts, done.last_error) == ("done", 1, None)


def test_replay_by_ids(rows: Inbox) -> None:
    result = run(
        "replay",
        "--id",
        str(rows.ids["ignored"]),
        "--id",
        str(rows.ids["created"]),
        database_url=rows.url,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "re-queued 2 events"
    statuses = rows.statuses()
    assert statuses["ignored"] == statuses["created"] == "pending"
    assert statuses["changed"] == "done"
    assert statuses["dead"] == "dead"


def test_replay_by_type_and_age(rows: Inbox, engine: sa.Engine) -> None:
    result = run("replay", "--type", "contact.creation", "--since", "1h", database_url=rows.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "re-queued 2 events"
    assert {n for n, s in rows.statuses().items() if s == "pending"} == {"created", "other_portal"}
    assert Worker(engine, handlers=Registry()).drain() == 2
    assert rows.statuses()["created"] == "done"


def test_replay_without_a_filter_refuses_and_changes_nothing(rows: Inbox) -> None:
    before = rows.statuses()

    result = run("replay", database_url=rows.url)

    assert result.returncode == 2
    assert "--all" in result.stderr
    assert "--status" in result.stderr
    assert result.stdout == ""
    assert rows.statuses() == before


def test_replay_all_requeues_every_row_and_a_worker_reapplies_them(
    rows: Inbox, engine: sa.Engine
) -> None:
    result = run("replay", "--all", database_url=rows.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"re-queued {len(ROWS)} events"
    assert {(r.status, r.attempts, r.last_error) for r in rows.rows().values()} == {
        ("pending", 0, None)
    }

    # No user handlers now: the mirror alone handles deals and companies; conversations, nothing.
    assert Worker(engine, handlers=Registry()).drain() == len(ROWS)
    statuses = rows.statuses()
    assert statuses.pop("ignored") == "ignored"
    assert set(statuses.values()) == {"done"}


def test_replay_wakes_a_running_worker(rows: Inbox, engine: sa.Engine) -> None:
    handled: list[int] = []
    handlers = Registry()

    @handlers.on("conversations", Kind.CREATION)
    def route_conversation(event: Event, session: Session) -> None:
        handled.append(event.inbox_id)

    stop = threading.Event()
    # A long poll: only the NOTIFY the replay sends can wake it in time.
    thread = threading.Thread(
        target=Worker(engine, poll_seconds=30, handlers=handlers).run, args=(stop,)
    )
    thread.start()
    try:
        time.sleep(0.3)
        result = run("replay", "--status", "ignored", database_url=rows.url)
        assert result.stdout.strip() == "re-queued 1 events"

        deadline = time.monotonic() + 5
        while rows.statuses()["ignored"] != "done" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)

    assert not thread.is_alive()
    assert handled == [rows.ids["ignored"]]
    assert rows.statuses()["ignored"] == "done"


def test_replay_is_a_domain_function_too(rows: Inbox, engine: sa.Engine) -> None:
    filters = inbox.Filters(statuses=("failed", "dead"), portal_id=ROWS["dead"]["portalId"])
    with engine.begin() as connection:
        assert inbox.replay(connection, filters) == 2
    assert {n for n, s in rows.statuses().items() if s == "pending"} == {"failed", "dead"}


# --- rules check -----------------------------------------------------------------------------


def test_actions_lists_under_a_header_row_as_events_does(clean_db: str) -> None:
    result = run("actions", database_url=clean_db)

    assert result.returncode == 0, result.stderr
    (header,) = result.stdout.splitlines()
    assert header.split() == ["id", "status", "att", "action", "rule", "object", "result"]
    assert result.stderr.strip() == "0 action runs"


def test_an_operator_command_on_an_unmigrated_database_says_to_migrate(
    database_url: str,
) -> None:
    with empty_database(database_url, "hubspot_webhooks_ops_unmigrated") as url:
        result = run("events", database_url=url)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        "hubspot-webhooks: database error: schema not migrated: run `hubspot-webhooks migrate`"
    )


def test_rules_check_accepts_the_examples() -> None:
    result = run_cli("rules", "check", str(EXAMPLE_RULES), env={})

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{EXAMPLE_RULES}: 4 rules, 5 actions: ok"


def test_rules_check_reads_rules_file_when_no_file_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RULES_FILE", str(EXAMPLE_RULES))

    assert service_cli.main(["rules", "check"]) == 0
    assert capsys.readouterr().out.strip() == f"{EXAMPLE_RULES}: 4 rules, 5 actions: ok"

    monkeypatch.delenv("RULES_FILE")
    assert service_cli.main(["rules", "check"]) == 2
    assert "give a FILE or set RULES_FILE" in capsys.readouterr().err


def test_rules_check_lists_each_problem_with_file_and_line() -> None:
    result = run_cli("rules", "check", str(INVALID_RULES), env={})

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "hubspot-webhooks: invalid rules:"
    found = [
        re.match(rf"  {re.escape(str(INVALID_RULES))}:(\d+): .+ \(fix: .+\)$", x) for x in lines[1:]
    ]
    assert all(found), lines
    assert [int(m.group(1)) for m in found if m] == list(invalid_rule_lines())
