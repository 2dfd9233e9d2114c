"""service.outbox end to end: an action run is enqueued once in the apply transaction, then
leased, delivered, retried, dead, replayed or scrubbed, and delivered exactly once.

Real Postgres, a real Worker with a RuleEngine loaded from a rules file, a real ActionRunner (the
`harness` fixture). Slack and webhook targets are local `Receiver`s; HubSpot is the fake. Backoff
is never waited out: tests move `next_attempt_at` to now() instead. Which rules fire, and when,
is tests/rules/test_engine.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from service import inbox, outbox, partitions, portals
from service.events import Event, Kind
from service.rules.registry import Registry
from tests.factories import (
    DEAL_WON,
    HOOK_PATH,
    PORTAL,
    SLACK_PATH,
    WEBHOOK_SECRET,
    action_run,
    change,
    hs,
    stage_of,
)
from tests.fake_hubspot import FakeHubSpot
from tests.receivers import Receiver, refused_url
from tests.support import MakeHarness

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


def big_deal(at: int = 1000) -> list[dict[str, Any]]:
    """Deal 301's name and amount, so templates have a record to read."""
    return [
        change("deal", 301, at, "dealname", "Big deal"),
        change("deal", 301, at, "amount", "1234.5"),
    ]


# --- exactly once ----------------------------------------------------------------------------


def test_a_rule_fires_once_per_event_across_duplicate_deliveries_and_replays(
    harness: MakeHarness, receiver: Receiver, engine: sa.Engine
) -> None:
    h = harness(DEAL_WON)
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
    harness: MakeHarness, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness(DEAL_WON)
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
    harness: MakeHarness, receiver: Receiver, engine: sa.Engine
) -> None:
    h = harness(WEBHOOK_ON_WON)
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
    harness: MakeHarness, receiver: Receiver, engine: sa.Engine
) -> None:
    handlers = Registry()
    calls: list[int] = []

    @handlers.on("deals", Kind.PROPERTY_CHANGE, prop="dealstage")
    def flaky(event: Event, session: Session) -> None:
        calls.append(event.inbox_id)
        if len(calls) == 1:
            raise RuntimeError("the CRM sync is down for a moment")

    h = harness(WEBHOOK_ON_WON, handlers=handlers)
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


# --- retries, dead letters, signatures -------------------------------------------------------


def test_a_target_failing_three_times_then_succeeding_gets_one_delivery_per_run(
    harness: MakeHarness, receiver: Receiver, engine: sa.Engine
) -> None:
    h = harness(WEBHOOK_ON_WON)
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
        Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
    envelope = Webhook(WEBHOOK_SECRET).verify(
        receiver.requests[-1].body, receiver.requests[-1].headers
    )
    assert envelope["rule"] == "deal-won"
    assert envelope["type"] == "deals.property_change"
    assert envelope["event"]["object_id"] == 301
    assert envelope["event"]["property_value"] == "closedwon"
    assert envelope["record"]["dealname"] == "Big deal"
    assert envelope["record"]["amount"] == "1234.5"


def test_a_target_that_always_fails_ends_dead_and_replays_once_fixed(
    harness: MakeHarness, receiver: Receiver
) -> None:
    h = harness(WEBHOOK_ON_WON, ACTION_MAX_ATTEMPTS="3")
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
    (header, line, error) = listing.stdout.splitlines()
    assert header.split()[:5] == ["id", "status", "att", "action", "rule"]
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
    Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
    (run,) = h.runs()
    assert (run.status, run.last_error, run.result) == ("done", None, "webhook 200")


def test_outbox_replay_delivers_a_dead_run_exactly_once(
    harness: MakeHarness, receiver: Receiver, engine: sa.Engine
) -> None:
    h = harness(WEBHOOK_ON_WON, ACTION_MAX_ATTEMPTS="1")
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


def test_a_paused_portals_runs_wait_and_run_once_when_it_resumes(
    harness: MakeHarness, receiver: Receiver, engine: sa.Engine
) -> None:
    h = harness(DEAL_WON)
    h.store(*big_deal(), change("deal", 301, 2000, "dealstage", "closedwon"))
    h.apply()
    with engine.begin() as connection:
        portals.pause(connection, PORTAL, "a rule misfires")

    assert h.act() == 0
    assert receiver.count() == 0
    assert [r.status for r in h.runs()] == ["pending", "pending"]

    with engine.begin() as connection:
        assert portals.resume(connection, PORTAL)
    assert h.act() == 2
    assert receiver.count() == 2


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
    harness: MakeHarness, receiver: Receiver, fake: FakeHubSpot
) -> None:
    h = harness(EVERY_ACTION, fake=fake, RULES_DRY_RUN="true")
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


def test_a_downstream_outage_does_not_hold_up_apply(
    harness: MakeHarness, receiver: Receiver
) -> None:
    h = harness(DEAL_WON, HOOK_URL=refused_url())
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
    harness: MakeHarness, receiver: Receiver, fake: FakeHubSpot
) -> None:
    h = harness(EVERY_ACTION, fake=fake)
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
    harness: MakeHarness, receiver: Receiver
) -> None:
    h = harness(
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
    harness: MakeHarness, receiver: Receiver
) -> None:
    h = harness(
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


def test_replaying_an_erased_run_sends_nothing(harness: MakeHarness, receiver: Receiver) -> None:
    h = harness(EVERY_ACTION)
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


# --- retention --------------------------------------------------------------------------------

DAY_MS = 86_400_000


def test_retention_drops_done_runs_and_keeps_pending_failed_and_dead_ones_claimable(
    own_engine: sa.Engine,
) -> None:
    fates = {1: "pending", 2: "failed", 3: "dead", 4: "done"}
    occurred = int(time.time() * 1000) - 3_600_000  # an hour ago: the migrated first partition
    runs = [action_run(n, occurred_at=occurred) for n in fates]
    with own_engine.begin() as connection:
        assert outbox.enqueue(connection, runs) == 4
        for inbox_id, status in fates.items():
            connection.execute(
                sa.text("UPDATE action_runs SET status = :s WHERE inbox_id = :i"),
                {"s": status, "i": inbox_id},
            )
        ids: dict[int, int] = dict(
            connection.execute(sa.text("SELECT inbox_id, id FROM action_runs")).all()
        )

    report = partitions.maintain(
        own_engine, outbox.partitioning(30 * 86400), now_ms=occurred + 40 * DAY_MS
    )

    assert report is not None
    assert "action_runs_legacy" in report.dropped
    assert report.kept == 3
    with own_engine.begin() as connection:
        placed = connection.execute(
            sa.text("SELECT inbox_id, status, tableoid::regclass::text FROM action_runs")
        ).all()
        assert sorted(tuple(r) for r in placed) == [
            (n, fates[n], "action_runs_default") for n in (1, 2, 3)
        ]
        assert outbox.enqueue(connection, runs) == 1, "the kept runs are still duplicates"
        connection.execute(sa.text("DELETE FROM action_runs WHERE inbox_id = 4"))
        assert sorted(r.inbox_id for r in outbox.claim(connection)) == [1, 2]
        assert outbox.replay(connection, outbox.RunFilters(ids=(ids[3],))) == 1
        assert [r.id for r in outbox.claim(connection)] == [ids[3]]


def test_a_run_without_its_events_occurred_at_is_refused(engine: sa.Engine) -> None:
    run = action_run(1)
    del run["event_occurred_at"]
    with engine.begin() as connection, pytest.raises(ValueError, match="occurredAt"):
        outbox.enqueue(connection, [run])
