"""The outbox end to end: rules fire in the apply transaction, the runner delivers, exactly once.

Real Postgres, a real Worker with a RuleEngine loaded from a rules file, a real ActionRunner.
Slack and webhook targets are local `Receiver`s; HubSpot is the fake. Backoff is never waited
out: tests move `next_attempt_at` to now() instead.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from service import inbox, outbox
from service.events import Event, Kind
from service.hubspot import client
from service.hubspot.pipelines import refresh_stages
from service.rules.engine import load_engine
from service.rules.registry import Registry
from service.settings import Settings
from service.worker.act import ActionRunner
from service.worker.apply import Worker
from tests.conftest import store_events
from tests.fake_hubspot import FakeHubSpot
from tests.receivers import Receiver, refused_url
from tests.test_mirror import PORTAL, change, hs

SECRET = "whsec_" + base64.b64encode(b"a-32-byte-test-key-for-hmac-256!").decode()
SLACK_PATH = "/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"
HOOK_PATH = "/hook"
TOKEN = "pat-na1-00000000-0000-4000-8000-000000062515"
APP_ID = "424242"
ROOT = Path(__file__).resolve().parent.parent

DEAL_WON = """
[[rules]]
name = "deal-won"
[rules.when]
object = "deals"
kind = "property_change"
property = "dealstage"
to = "Closed Won"

[[rules.do]]
action = "slack"
text = "Won: {record.dealname} ({record.amount|money})"

[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"
"""

WEBHOOK_ON_WON = """
[[rules]]
name = "deal-won"
[rules.when]
object = "deals"
kind = "property_change"
property = "dealstage"
to = "closedwon"

[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"
"""


@dataclass
class Harness:
    """A worker and an action runner over one rules file, with their targets."""

    engine: sa.Engine
    database_url: str
    settings: Settings
    worker: Worker
    runner: ActionRunner
    receiver: Receiver
    env: dict[str, str] = field(default_factory=dict)

    def store(self, *events: dict[str, Any]) -> int:
        """Deliver `events` in one request, as HubSpot would; returns how many were new."""
        return store_events(self.database_url, list(events))

    def apply(self) -> int:
        """The apply stage until nothing is due."""
        return self.worker.drain()

    def act(self) -> int:
        """The act stage until nothing is due."""
        return self.runner.drain()

    def runs(self) -> list[Any]:
        """Every action run, oldest first, payload included."""
        with self.engine.connect() as connection:
            return list(connection.execute(sa.text("SELECT * FROM action_runs ORDER BY id")))

    def fired(self) -> list[tuple[str, int, str]]:
        """(rule, object id, action) of every action run, oldest first."""
        return [(r.rule, r.object_id, r.action) for r in self.runs()]

    def make_due(self) -> None:
        """Skip the backoff (or an expired lease): every unfinished run is due now."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE action_runs SET next_attempt_at = now()"
                    " WHERE status IN ('pending', 'failed')"
                )
            )

    def inbox_statuses(self) -> list[str]:
        """The status of every inbox row, oldest first."""
        with self.engine.connect() as connection:
            return list(connection.scalars(sa.text("SELECT status FROM inbox_events ORDER BY id")))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m service ARGS` against this database."""
        base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        return subprocess.run(
            [sys.executable, "-m", "service", *args],
            env={**base, "DATABASE_URL": self.database_url, "LOG_LEVEL": "WARNING"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


Make = Callable[..., Harness]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Slack and the webhook receiver: one local server, two paths."""
    with Receiver() as server:
        yield server


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    """HubSpot, with the seed portal's records and its private app token."""
    with FakeHubSpot() as server:
        server.load_seed_file()
        yield server


@pytest.fixture
def make(clean_db: str, engine: sa.Engine, receiver: Receiver, tmp_path: Path) -> Iterator[Make]:
    """Build a Harness from rules TOML, extra environment and optional user handlers."""
    runners: list[ActionRunner] = []

    def build(
        rules: str,
        *,
        handlers: Registry | None = None,
        fake: FakeHubSpot | None = None,
        **env: str,
    ) -> Harness:
        path = tmp_path / f"rules-{len(runners)}.toml"
        path.write_text(textwrap.dedent(rules))
        environ = {
            "DATABASE_URL": clean_db,
            "RULES_FILE": str(path),
            "SLACK_WEBHOOK_URL": receiver.url_for(SLACK_PATH),
            "HOOK_URL": receiver.url_for(HOOK_PATH),
            "HOOK_SECRET": SECRET,
            "HUBSPOT_APP_ID": APP_ID,
            **env,
        }
        if fake is not None:
            environ |= {"HUBSPOT_ACCESS_TOKEN": TOKEN, "HUBSPOT_API_BASE_URL": fake.url}
        settings = Settings.from_env(environ)
        rule_engine = load_engine(settings, [])
        assert rule_engine is not None
        worker = Worker(engine, max_attempts=3, handlers=handlers or Registry(), rules=rule_engine)
        runner = ActionRunner(
            engine, rule_engine.rules, settings, api=client.from_settings(settings, engine)
        )
        runners.append(runner)
        return Harness(engine, clean_db, settings, worker, runner, receiver, environ)

    yield build
    for runner in runners:
        runner.close()


def big_deal(at: int = 1000) -> list[dict[str, Any]]:
    """Deal 301's name and amount, so templates have a record to read."""
    return [
        change("deal", 301, at, "dealname", "Big deal"),
        change("deal", 301, at, "amount", "1234.5"),
    ]


# --- exactly once ----------------------------------------------------------------------------


def test_a_rule_fires_once_per_event_across_duplicate_deliveries_and_replays(
    make: Make, receiver: Receiver, engine: sa.Engine
) -> None:
    h = make(DEAL_WON)
    won = change("deal", 301, 2000, "dealstage", "closedwon")
    h.store(*big_deal())
    assert h.store(won, won) == 1  # a duplicate inside one request
    assert h.store(won) == 0  # and HubSpot's retry of the whole request
    h.apply()

    assert h.fired() == [("deal-won", 301, "slack"), ("deal-won", 301, "webhook")]
    assert h.act() == 2
    assert receiver.count(SLACK_PATH) == 1
    assert receiver.count(HOOK_PATH) == 1
    assert receiver.requests[0].json() == {"text": "Won: Big deal (1,234.50)"}

    # An operator replays every event; then rebuilds the mirror from scratch and replays again.
    with engine.begin() as connection:
        assert inbox.replay(connection, inbox.Filters()) == 3
    h.apply()
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM crm_objects"))
        inbox.replay(connection, inbox.Filters())
    h.apply()
    h.make_due()

    assert h.act() == 0
    assert h.fired() == [("deal-won", 301, "slack"), ("deal-won", 301, "webhook")]
    assert [r.status for r in h.runs()] == ["done", "done"]
    assert receiver.count() == 2


def test_a_worker_that_dies_before_commit_fires_nothing_and_the_retry_fires_once(
    make: Make, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = make(DEAL_WON)
    h.store(*big_deal(), change("deal", 301, 2000, "dealstage", "closedwon"))

    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("worker killed after writing the action runs, before COMMIT")

    with monkeypatch.context() as patch:
        patch.setattr(inbox, "settle", killed)
        with pytest.raises(RuntimeError, match="worker killed"):
            h.worker.run_batch()

    assert h.runs() == []
    assert h.inbox_statuses() == ["pending", "pending", "pending"]
    h.apply()
    assert h.fired() == [("deal-won", 301, "slack"), ("deal-won", 301, "webhook")]
    h.act()
    assert receiver.count() == 2


def test_an_action_runner_that_dies_after_leasing_runs_them_once_the_lease_expires(
    make: Make, receiver: Receiver, engine: sa.Engine
) -> None:
    h = make(WEBHOOK_ON_WON)
    h.store(change("deal", 301, 2000, "dealstage", "closedwon"))
    h.apply()
    # A claim rolled back (the process died inside the transaction) changes nothing.
    with engine.connect() as connection, connection.begin() as transaction:
        assert len(outbox.claim(connection)) == 1
        transaction.rollback()
    (run,) = h.runs()
    assert (run.status, run.attempts) == ("pending", 0)
    # A lease committed by a runner that then died: the run waits for the lease to run out.
    with engine.begin() as connection:
        outbox.claim(connection)
    assert h.act() == 0
    h.make_due()  # the lease ran out

    assert h.act() == 1
    assert h.act() == 0
    (request,) = receiver.requests
    assert request.headers["webhook-id"] == f"run_{run.id}"
    assert [(r.status, r.attempts) for r in h.runs()] == [("done", 2)]


def test_an_event_whose_user_handler_fails_once_is_retried_and_fires_once(
    make: Make, receiver: Receiver, engine: sa.Engine
) -> None:
    handlers = Registry()
    calls: list[int] = []

    @handlers.on("deals", Kind.PROPERTY_CHANGE, prop="dealstage")
    def flaky(event: Event, session: Session) -> None:
        calls.append(event.inbox_id)
        if len(calls) == 1:
            raise RuntimeError("the CRM sync is down for a moment")

    h = make(WEBHOOK_ON_WON, handlers=handlers)
    h.store(change("deal", 301, 2000, "dealstage", "closedwon"))
    h.apply()
    assert h.inbox_statuses() == ["failed"]
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE inbox_events SET next_attempt_at = now()"))
    h.apply()

    assert h.inbox_statuses() == ["done"]
    assert len(calls) == 2
    assert h.fired() == [("deal-won", 301, "webhook")]
    h.act()
    assert receiver.count(HOOK_PATH) == 1


# --- conditions against the mirror -----------------------------------------------------------

LIFECYCLE = """
[[rules]]
name = "lead-to-sql"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
from = "lead"
to = "salesqualifiedlead"

[[rules.do]]
action = "log"
message = "{event.previous_value} -> {event.property_value}"

[[rules]]
name = "became-sql"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
to = "salesqualifiedlead"

[[rules.do]]
action = "log"
message = "{event.previous_value|default:nothing} -> {event.property_value}"
"""


def stage_of(contact: int, at: int, value: str) -> dict[str, Any]:
    """A contact's lifecyclestage changed to `value` at `at`."""
    return change("contact", contact, at, "lifecyclestage", value)


def test_from_sees_the_mirror_value_before_the_event(make: Make) -> None:
    h = make(LIFECYCLE)
    h.store(stage_of(102, 1000, "lead"))
    h.apply()
    assert h.fired() == []
    h.store(stage_of(102, 2000, "salesqualifiedlead"))
    h.apply()

    assert h.fired() == [("lead-to-sql", 102, "log"), ("became-sql", 102, "log")]
    assert [r.payload["message"] for r in h.runs()] == [
        "lead -> salesqualifiedlead",
        "lead -> salesqualifiedlead",
    ]


def test_from_sees_the_value_before_each_change_inside_one_batch(make: Make) -> None:
    h = make(LIFECYCLE)
    # Out of order in one delivery: the lead (older) must count as the value before.
    h.store(stage_of(103, 2000, "salesqualifiedlead"), stage_of(103, 1000, "lead"))
    h.apply()

    assert h.fired() == [("lead-to-sql", 103, "log"), ("became-sql", 103, "log")]


def test_a_stale_change_arriving_late_fires_nothing(make: Make) -> None:
    h = make(LIFECYCLE)
    h.store(stage_of(102, 1000, "lead"))
    h.apply()
    h.store(stage_of(102, 3000, "customer"))
    h.apply()
    h.store(stage_of(102, 2000, "salesqualifiedlead"))  # happened before "customer"
    h.apply()

    assert h.fired() == []
    assert h.inbox_statuses() == ["done", "done", "done"]


def test_a_change_from_a_never_seen_record_has_no_previous_value(make: Make) -> None:
    h = make(LIFECYCLE)
    h.store(stage_of(104, 1000, "salesqualifiedlead"))
    h.apply()

    assert h.fired() == [("became-sql", 104, "log")]
    assert h.runs()[0].payload["message"] == "nothing -> salesqualifiedlead"


def test_a_deal_stage_named_by_label_fires_for_its_stage_id(make: Make) -> None:
    h = make(DEAL_WON)
    h.store(change("deal", 301, 2000, "dealstage", "closedlost"))
    h.store(change("deal", 302, 2000, "dealstage", "closedwon"))
    h.apply()

    assert h.fired() == [("deal-won", 302, "slack"), ("deal-won", 302, "webhook")]


def test_labels_of_custom_pipelines_come_from_the_pipelines_api(
    make: Make, fake: FakeHubSpot
) -> None:
    fake.set_pipelines(
        PORTAL,
        "deals",
        [
            {
                "id": "enterprise",
                "label": "Enterprise",
                "displayOrder": 1,
                "stages": [
                    {"id": "98765", "label": "Signed", "displayOrder": 0, "metadata": {}},
                    {"id": "98766", "label": "Lost", "displayOrder": 1, "metadata": {}},
                ],
            }
        ],
    )
    h = make(
        """
        [[rules]]
        name = "signed"
        [rules.when]
        object = "deals"
        kind = "property_change"
        property = "dealstage"
        to = "Signed"
        [[rules.do]]
        action = "log"
        """,
        fake=fake,
    )
    assert h.runner.api is not None
    assert refresh_stages(h.engine, h.runner.api, PORTAL) == 2

    h.store(change("deal", 301, 2000, "dealstage", "98766"))
    h.store(change("deal", 302, 2000, "dealstage", "98765"))
    h.apply()

    assert h.fired() == [("signed", 302, "log")]


# --- retries, dead letters, signatures -------------------------------------------------------


def test_a_target_failing_three_times_then_succeeding_gets_one_delivery_per_run(
    make: Make, receiver: Receiver, engine: sa.Engine
) -> None:
    h = make(WEBHOOK_ON_WON)
    h.store(*big_deal(), change("deal", 301, 2000, "dealstage", "closedwon"))
    h.apply()
    receiver.fail_next(3, 503)

    for attempt in (1, 2, 3):
        assert h.runner.run_once() == 1
        (run,) = h.runs()
        assert (run.status, run.attempts) == ("failed", attempt)
        assert run.last_error == "webhook answered 503"
        with engine.connect() as connection:
            backoff = connection.scalar(
                sa.text("SELECT extract(epoch FROM next_attempt_at - now()) FROM action_runs")
            )
        assert backoff is not None
        assert backoff > 4  # at least 10 s * 2^(n-1) * 0.5 of exponential backoff
        assert h.runner.run_once() == 0  # not due while backing off
        h.make_due()
    assert h.runner.run_once() == 1
    h.make_due()
    assert h.runner.run_once() == 0

    (run,) = h.runs()
    assert (run.status, run.attempts, run.result, run.last_error) == (
        "done",
        4,
        "webhook 200",
        None,
    )
    assert [r.status for r in receiver.requests] == [503, 503, 503, 200]
    assert {r.headers["webhook-id"] for r in receiver.requests} == {f"run_{run.id}"}
    for request in receiver.requests:
        assert request.path == HOOK_PATH
        Webhook(SECRET).verify(request.body, request.headers)
    envelope = Webhook(SECRET).verify(receiver.requests[-1].body, receiver.requests[-1].headers)
    assert envelope["rule"] == "deal-won"
    assert envelope["type"] == "deals.property_change"
    assert envelope["event"]["object_id"] == 301
    assert envelope["event"]["property_value"] == "closedwon"
    assert envelope["record"]["dealname"] == "Big deal"
    assert envelope["record"]["amount"] == "1234.5"


def test_a_target_that_always_fails_ends_dead_and_replays_once_fixed(
    make: Make, receiver: Receiver
) -> None:
    h = make(WEBHOOK_ON_WON, ACTION_MAX_ATTEMPTS="3")
    h.store(change("deal", 301, 2000, "dealstage", "closedwon"))
    h.apply()
    receiver.always_fail(500)
    for _ in range(3):
        assert h.runner.run_once() == 1
        h.make_due()

    (run,) = h.runs()
    assert (run.status, run.attempts) == ("dead", 3)
    assert run.last_error == "webhook answered 500"
    assert h.runner.run_once() == 0  # dead runs are not retried, however due
    assert receiver.count(HOOK_PATH) == 3

    listing = h.cli("actions", "--status", "dead")
    assert listing.returncode == 0, listing.stderr
    (line, error) = listing.stdout.splitlines()
    assert line.split()[:5] == [str(run.id), "dead", "3", "webhook", "deal-won"]
    assert "deals:301" in line
    assert error.strip() == "error: webhook answered 500"
    assert listing.stderr.strip() == "1 action runs"
    shown = h.cli("actions", "show", str(run.id))
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert (detail["id"], detail["status"], detail["rule"]) == (run.id, "dead", "deal-won")
    assert detail["payload"]["body"]["event"]["property_value"] == "closedwon"

    receiver.reset()  # the target is fixed
    replayed = h.cli("actions", "replay", "--status", "dead")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "re-queued 1 action runs"

    assert h.act() == 1
    assert h.act() == 0
    (request,) = receiver.requests
    assert request.status == 200
    assert request.headers["webhook-id"] == f"run_{run.id}"
    Webhook(SECRET).verify(request.body, request.headers)
    (run,) = h.runs()
    assert (run.status, run.last_error, run.result) == ("done", None, "webhook 200")


def test_outbox_replay_delivers_a_dead_run_exactly_once(
    make: Make, receiver: Receiver, engine: sa.Engine
) -> None:
    h = make(WEBHOOK_ON_WON, ACTION_MAX_ATTEMPTS="1")
    h.store(change("deal", 301, 2000, "dealstage", "closedwon"))
    h.apply()
    receiver.fail_next(1, 502)
    h.act()
    assert [r.status for r in h.runs()] == ["dead"]

    with engine.begin() as connection:
        assert outbox.replay(connection, outbox.RunFilters(statuses=("dead",))) == 1
        assert outbox.replay(connection, outbox.RunFilters(statuses=("dead",))) == 0
    h.act()
    h.make_due()
    h.act()

    assert [r.status for r in receiver.requests] == [502, 200]
    assert [r.status for r in h.runs()] == ["done"]


# --- echo suppression ------------------------------------------------------------------------

ECHO_RULES = """
[[rules]]
name = "sql-task"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
to = "salesqualifiedlead"
[[rules.do]]
action = "hubspot_task"
subject = "Follow up with {record.firstname}"
priority = "HIGH"

[[rules]]
name = "anything-created"
[rules.when]
object = "*"
kind = "creation"
[[rules.do]]
action = "log"

[[rules]]
name = "contact-associations"
[rules.when]
object = "contacts"
kind = "association_change"
[[rules.do]]
action = "log"

[[rules]]
name = "task-status"
[rules.when]
object = "*"
kind = "property_change"
property = "hs_task_status"
[[rules.do]]
action = "log"
"""


def task_events(task_id: int, at: int) -> list[dict[str, Any]]:
    """What HubSpot sends when task `task_id` appears on contact 102 (generic subscriptions)."""
    return [
        hs("object.creation", task_id, at, objectTypeId="0-27", changeSource="INTEGRATION"),
        hs(
            "object.associationChange",
            None,
            at,
            fromObjectTypeId="0-1",
            fromObjectId=102,
            toObjectTypeId="0-27",
            toObjectId=task_id,
            associationTypeId=204,
            associationCategory="HUBSPOT_DEFINED",
            associationRemoved=False,
            isPrimaryAssociation=False,
        ),
        hs(
            "object.propertyChange",
            task_id,
            at,
            objectTypeId="0-27",
            propertyName="hs_task_status",
            propertyValue="NOT_STARTED",
            changeSource="INTEGRATION",
        ),
    ]


def test_the_echo_of_a_task_our_action_created_fires_nothing(make: Make, fake: FakeHubSpot) -> None:
    h = make(ECHO_RULES, fake=fake)
    h.store(change("contact", 102, 1000, "firstname", "Charles"))
    h.store(stage_of(102, 2000, "salesqualifiedlead"))
    h.apply()
    assert h.act() == 1

    (task,) = fake.created("tasks")
    assert task.properties["hs_task_subject"] == "Follow up with Charles"
    assert task.properties["hs_task_priority"] == "HIGH"
    (run,) = h.runs()
    assert (run.status, run.result) == ("done", f"created task {task.id}")
    with h.engine.connect() as connection:
        own = connection.execute(
            sa.text("SELECT portal_id, object_type, object_id FROM own_writes")
        )
        assert [tuple(r) for r in own] == [(PORTAL, "tasks", int(task.id))]

    # Someone else's task on the same contact fires the rules: they would match an echo too.
    h.store(*task_events(999_999, 3000))
    h.apply()
    others = [rule for rule, _, _ in h.fired()[1:]]
    assert sorted(others) == ["anything-created", "contact-associations", "task-status"]

    h.store(*task_events(int(task.id), 3000))
    h.apply()

    echoes = [rule for rule, _, _ in h.fired()[1 + len(others) :]]
    assert echoes == []
    assert len(fake.created("tasks")) == 1


def test_a_rule_on_association_changes_runs_on_the_record_the_association_is_from(
    make: Make,
) -> None:
    h = make(
        """
        [[rules]]
        name = "contact-linked"
        [rules.when]
        object = "contacts"
        kind = "association_change"
        [[rules.do]]
        action = "log"
        message = "{record.firstname} linked"
        """
    )
    h.store(change("contact", 102, 1000, "firstname", "Charles"))
    h.store(
        hs(
            "contact.associationChange",
            None,
            2000,
            associationType="CONTACT_TO_COMPANY",
            fromObjectId=102,
            toObjectId=201,
            associationRemoved=False,
            isPrimaryAssociation=False,
        )
    )
    h.apply()

    (run,) = h.runs()
    assert (run.object_type, run.object_id) == ("contacts", 102)
    assert run.payload["message"] == "Charles linked"


def test_changes_hubspot_attributes_to_our_app_fire_only_rules_that_ask_for_them(
    make: Make,
) -> None:
    h = make(
        """
        [[rules]]
        name = "default"
        [rules.when]
        object = "contacts"
        kind = "property_change"
        property = "lifecyclestage"
        [[rules.do]]
        action = "log"

        [[rules]]
        name = "own-too"
        [rules.when]
        object = "contacts"
        kind = "property_change"
        property = "lifecyclestage"
        include_own_writes = true
        [[rules.do]]
        action = "log"
        """
    )
    ours = stage_of(101, 1000, "lead") | {"changeSource": "INTEGRATION", "sourceId": APP_ID}
    theirs = stage_of(102, 1000, "lead") | {"changeSource": "CRM_UI", "sourceId": "userId:8827"}
    other_app = stage_of(103, 1000, "lead") | {"changeSource": "INTEGRATION", "sourceId": "99"}
    h.store(ours, theirs, other_app)
    h.apply()

    assert sorted(h.fired()) == [
        ("default", 102, "log"),
        ("default", 103, "log"),
        ("own-too", 101, "log"),
        ("own-too", 102, "log"),
        ("own-too", 103, "log"),
    ]


# --- dry run, outages, privacy ---------------------------------------------------------------

EVERY_ACTION = """
[[rules]]
name = "sql"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
to = "salesqualifiedlead"

[[rules.do]]
action = "slack"
text = "{record.email} is sales qualified"

[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"

[[rules.do]]
action = "hubspot_task"
subject = "Call {record.email}"

[[rules.do]]
action = "hubspot_note"
body = "{record.email} qualified"
"""


def test_a_dry_run_turns_every_action_into_log_and_sends_nothing(
    make: Make, receiver: Receiver, fake: FakeHubSpot
) -> None:
    h = make(EVERY_ACTION, fake=fake, RULES_DRY_RUN="true")
    h.store(change("contact", 102, 1000, "email", "charles@example.com"))
    h.store(stage_of(102, 2000, "salesqualifiedlead"))
    h.apply()

    runs = h.runs()
    assert [r.action for r in runs] == ["log"] * 4
    assert [r.payload["action"] for r in runs] == ["log"] * 4
    assert [r.payload["would"]["action"] for r in runs] == [
        "slack",
        "webhook",
        "hubspot_task",
        "hubspot_note",
    ]
    assert runs[0].payload["would"]["text"] == "charles@example.com is sales qualified"
    assert h.act() == 4

    assert receiver.requests == []
    assert fake.created() == []
    assert [(r.status, r.result) for r in h.runs()] == [("done", "logged")] * 4


def test_a_downstream_outage_does_not_hold_up_apply(make: Make, receiver: Receiver) -> None:
    h = make(DEAL_WON, HOOK_URL=refused_url())
    receiver.always_fail(503)
    h.store(*big_deal(), change("deal", 301, 2000, "dealstage", "closedwon"))
    h.apply()
    assert h.inbox_statuses() == ["done"] * 3
    assert h.act() == 2

    assert [(r.action, r.status) for r in h.runs()] == [("slack", "failed"), ("webhook", "failed")]
    slack, hook = h.runs()
    assert slack.last_error == "slack answered 503"
    assert hook.last_error == "webhook: ConnectError"
    # Later events keep being applied, and fire, while the targets are down.
    h.store(change("deal", 302, 3000, "dealstage", "closedwon"))
    assert h.apply() == 1
    assert h.inbox_statuses() == ["done"] * 4
    assert len(h.runs()) == 4


def privacy_deletion(contact: int, at: int) -> dict[str, Any]:
    """HubSpot's GDPR deletion of a contact."""
    return hs("contact.privacyDeletion", contact, at)


def test_a_privacy_deletion_scrubs_the_contacts_pending_action_payloads(
    make: Make, receiver: Receiver, fake: FakeHubSpot
) -> None:
    h = make(EVERY_ACTION, fake=fake)
    h.store(change("contact", 102, 1000, "email", "charles@example.com"))
    h.store(stage_of(102, 2000, "salesqualifiedlead"))
    h.store(change("contact", 103, 1000, "email", "mary@example.com"))
    h.store(stage_of(103, 2000, "salesqualifiedlead"))
    h.apply()
    assert "charles@example.com" in json.dumps([r.payload for r in h.runs()])

    h.store(privacy_deletion(102, 5000))
    h.apply()

    runs = h.runs()
    erased = [r for r in runs if r.object_id == 102]
    kept = [r for r in runs if r.object_id == 103]
    assert len(erased) == len(kept) == 4
    for run in erased:
        assert run.status == "dead"
        assert run.payload == {"action": run.action, "erased": True}
        assert run.last_error == "contact erased by a privacy deletion"
    assert "charles@example.com" not in json.dumps([r.payload for r in runs])
    assert all(r.status == "pending" for r in kept)
    assert kept[0].payload["text"] == "mary@example.com is sales qualified"

    h.act()
    sent = json.dumps([r.body.decode() for r in receiver.requests])
    sent += json.dumps([c.properties for c in fake.created()])
    assert "charles@example.com" not in sent
    assert "mary@example.com" in sent


def test_a_privacy_deletion_also_scrubs_runs_that_are_already_done(
    make: Make, receiver: Receiver
) -> None:
    h = make(
        """
        [[rules]]
        name = "lifecycle"
        [rules.when]
        object = "contacts"
        kind = "property_change"
        property = "lifecyclestage"
        [[rules.do]]
        action = "webhook"
        url = "env:HOOK_URL"
        secret = "env:HOOK_SECRET"
        """
    )
    h.store(change("contact", 102, 1000, "email", "charles@example.com"))
    h.store(stage_of(102, 2000, "customer"))
    h.apply()
    h.act()
    assert [r.status for r in h.runs()] == ["done"]

    h.store(privacy_deletion(102, 5000))
    h.apply()

    (run,) = h.runs()
    assert (run.status, run.payload) == ("done", {"action": "webhook", "erased": True})


def test_a_change_and_the_privacy_deletion_in_one_batch_leave_no_personal_data_to_send(
    make: Make, receiver: Receiver
) -> None:
    h = make(
        """
        [[rules]]
        name = "email-changed"
        [rules.when]
        object = "contacts"
        kind = "property_change"
        property = "email"
        [[rules.do]]
        action = "slack"
        text = "new email: {event.property_value}"
        [[rules.do]]
        action = "webhook"
        url = "env:HOOK_URL"
        secret = "env:HOOK_SECRET"
        """
    )
    # HubSpot batches events: the change and the contact's erasure can arrive together.
    h.store(
        change("contact", 102, 1000, "email", "charles@example.com"),
        privacy_deletion(102, 2000),
    )
    h.apply()

    assert "charles@example.com" not in json.dumps([r.payload for r in h.runs()])
    assert [r.status for r in h.runs() if r.status in ("pending", "failed")] == []
    h.act()
    assert all(b"charles@example.com" not in r.body for r in receiver.requests)


def test_replaying_an_erased_run_sends_nothing(make: Make, receiver: Receiver) -> None:
    h = make(EVERY_ACTION)
    h.store(change("contact", 102, 1000, "email", "charles@example.com"))
    h.store(stage_of(102, 2000, "salesqualifiedlead"))
    h.apply()
    h.store(privacy_deletion(102, 5000))
    h.apply()

    with h.engine.begin() as connection:
        # Erased runs are not re-queued: nothing of them is left to send.
        assert outbox.replay(connection, outbox.RunFilters(statuses=("dead",))) == 0
    h.act()

    assert receiver.requests == []
    assert len(h.runs()) == 4
    assert all(r.status == "dead" for r in h.runs())
