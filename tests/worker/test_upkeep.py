"""The alert loop: each condition, driven for real, gives exactly one "firing" and one "resolved"
message although two workers' loops evaluate it concurrently; reminders at most hourly; the
webhook signed as Standard Webhooks; Slack's payload; delivery retried through the outbox."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from service import inbox, outbox
from service.hubspot.client import MAX_TRIES, HubSpotUnavailable
from service.hubspot.oauth import Tokens, save_tokens
from service.hubspot.sealing import TokenCipher
from service.settings import Settings
from service.worker.apply import Worker
from service.worker.upkeep import (
    RATE_LIMIT_429S,
    RATE_LIMIT_WINDOW,
    keep_partitions,
    run_reconcile,
)
from tests.alerting import ALERT_HOOK_PATH, ALERT_SLACK_PATH, AlertFleet
from tests.factories import PORTAL, TOKEN_KEY, WEBHOOK_SECRET, numbered_event
from tests.fake_hubspot import FakeHubSpot
from tests.support import DbClock, MakeApi, Store


def fires_once(fleet: AlertFleet, key: str) -> None:
    fleet.run_loops()
    fleet.deliver()
    assert fleet.received() == [(key, "firing")]
    assert len(fleet.slack_texts()) == 1


def resolves_once(fleet: AlertFleet, key: str) -> None:
    fleet.run_loops()
    fleet.deliver()
    assert fleet.received() == [(key, "firing"), (key, "resolved")]
    assert len(fleet.slack_texts()) == 2
    assert "[RESOLVED]" in fleet.slack_texts()[1]


CIPHER = TokenCipher((TOKEN_KEY,))


def tokens() -> Tokens:
    return Tokens("access", "refresh", datetime.now(UTC) + timedelta(hours=1))


def test_nothing_is_sent_while_all_is_well(fleet: AlertFleet) -> None:
    fleet.run_loops()

    assert fleet.deliver() == 0
    assert fleet.receiver.requests == []


def test_dead_letters(fleet: AlertFleet, store: Store) -> None:
    store([numbered_event(1), numbered_event(2)])
    fleet.sql("UPDATE inbox_events SET status = 'dead'")
    fires_once(fleet, "dead_letters")
    assert "dead inbox events 2, action runs 0, hydration requests 0" in fleet.slack_texts()[0]
    assert "Dashboard: https://hooks.example/admin" in fleet.slack_texts()[0]

    with fleet.engine.begin() as connection:
        inbox.replay(connection, inbox.Filters(statuses=("dead",)))
    resolves_once(fleet, "dead_letters")


def test_lag(fleet: AlertFleet, store: Store, worker: Worker) -> None:
    store([numbered_event(1)])
    fleet.run_loops()  # due, but only just
    fleet.sql("UPDATE inbox_events SET next_attempt_at = now() - interval '6 minutes'")
    fires_once(fleet, "lag")
    assert "(ALERT_LAG 300 s)" in fleet.slack_texts()[0]

    worker.drain()
    resolves_once(fleet, "lag")


def test_no_worker(fleet: AlertFleet) -> None:
    fleet.sql("UPDATE worker_heartbeats SET last_seen_at = now() - interval '90 seconds'")
    fleet.run_loops()  # silent for less than 2 minutes: not yet
    fleet.sql("UPDATE worker_heartbeats SET last_seen_at = now() - interval '121 seconds'")
    fires_once(fleet, "no_worker")

    fleet.beat("another-worker")
    resolves_once(fleet, "no_worker")


def test_portal_needs_reinstall(fleet: AlertFleet) -> None:
    save_tokens(fleet.engine, PORTAL, tokens(), cipher=CIPHER)
    fleet.run_loops()
    fleet.sql("UPDATE hubspot_tokens SET needs_reinstall = true WHERE portal_id = :p", p=PORTAL)
    fires_once(fleet, "reinstall")
    assert f"portals needing re-install: {PORTAL}" in fleet.slack_texts()[0]

    save_tokens(fleet.engine, PORTAL, tokens(), cipher=CIPHER)  # installed again
    resolves_once(fleet, "reinstall")


def test_hubspot_keeps_answering_429(
    fleet: AlertFleet, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    api = make_api(limiter_sleep=DbClock(engine))

    def answered_429(times: int) -> None:
        fake.fail_next(times, status=429)
        for _ in range(times // MAX_TRIES):
            with pytest.raises(HubSpotUnavailable):
                api.batch_read(PORTAL, "contacts", [101], ["email"])

    answered_429(MAX_TRIES)  # fewer than RATE_LIMIT_429S: not an alert
    fleet.run_loops()
    assert fleet.deliver() == 0
    answered_429(MAX_TRIES * -(-RATE_LIMIT_429S // MAX_TRIES))
    fires_once(fleet, "rate_limited")
    assert f"18 answers 429 in the last {RATE_LIMIT_WINDOW:g} s" in fleet.slack_texts()[0]

    # A whole window passes (moved in the database, not slept); one more 429 keeps it firing.
    fleet.sql(
        "UPDATE hubspot_api_call_minutes SET minute = minute - make_interval(secs => :w)",
        w=RATE_LIMIT_WINDOW + 60,
    )
    answered_429(MAX_TRIES)
    fleet.run_loops()
    assert fleet.deliver() == 0
    # Another window passes without a 429: resolved.
    fleet.sql(
        "UPDATE hubspot_api_call_minutes SET minute = minute - make_interval(secs => :w)",
        w=RATE_LIMIT_WINDOW + 60,
    )
    resolves_once(fleet, "rate_limited")


def test_429s_already_in_the_window_when_the_loops_first_look_fire(
    fleet: AlertFleet, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    api = make_api(limiter_sleep=DbClock(engine))
    fake.fail_next(2 * MAX_TRIES, status=429)
    for _ in range(2):
        with pytest.raises(HubSpotUnavailable):
            api.batch_read(PORTAL, "contacts", [101], ["email"])

    fires_once(fleet, "rate_limited")


PARTITIONED = ("inbox_events", "action_runs", "hubspot_api_call_minutes", "applied_changes")


def test_upkeep_keeps_every_partitioned_table_ready_days_ahead(
    own_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    def partitions(table: str) -> list[str]:
        with own_engine.connect() as connection:
            return list(
                connection.scalars(
                    sa.text(
                        "SELECT inhrelid::regclass::text FROM pg_inherits"
                        " WHERE inhparent = CAST(:t AS regclass) ORDER BY 1"
                    ),
                    {"t": table},
                )
            )

    migrated = {table: partitions(table) for table in PARTITIONED}
    with own_engine.begin() as connection:  # as if a day had passed: one day fewer ahead
        for table in PARTITIONED:
            connection.execute(sa.text(f"DROP TABLE {migrated[table][-2]}"))

    with caplog.at_level(logging.INFO, logger="service.worker.upkeep"):
        assert keep_partitions(own_engine, Settings.from_env({})) == 0  # then it waits

    assert {table: partitions(table) for table in PARTITIONED} == migrated
    kept = {
        getattr(r, "table", None): getattr(r, "partitions_created", None)
        for r in caplog.records
        if r.getMessage() == "partitions_kept"
    }
    assert kept == {table: [migrated[table][-2]] for table in PARTITIONED}


def test_scheduled_reconcile_fails(
    fleet: AlertFleet, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    api = make_api()
    save_tokens(engine, PORTAL, tokens(), cipher=CIPHER)
    fake.fail_next(1000, status=500)
    with pytest.raises(HubSpotUnavailable):
        run_reconcile(engine, api, fleet.settings)
    fires_once(fleet, "reconcile")
    assert "last run: failed HubSpotUnavailable" in fleet.slack_texts()[0]

    fake.reset()
    run_reconcile(engine, api, fleet.settings)
    resolves_once(fleet, "reconcile")


def test_reminders_go_out_at_most_hourly(fleet: AlertFleet, store: Store) -> None:
    store([numbered_event(1)])
    fleet.sql("UPDATE inbox_events SET status = 'dead'")
    fires_once(fleet, "dead_letters")

    fleet.sql("UPDATE alert_states SET last_sent_at = now() - interval '59 minutes'")
    fleet.run_loops()
    assert fleet.deliver() == 0
    fleet.sql("UPDATE alert_states SET last_sent_at = now() - interval '61 minutes'")
    fleet.run_loops()
    fleet.deliver()
    fleet.run_loops()
    fleet.deliver()

    assert fleet.received() == [("dead_letters", "firing"), ("dead_letters", "reminder")]
    assert "[STILL FIRING]" in fleet.slack_texts()[1]


def test_the_webhook_is_signed_as_standard_webhooks_and_slack_gets_text(
    fleet: AlertFleet, store: Store
) -> None:
    store([numbered_event(1)])
    fleet.sql("UPDATE inbox_events SET status = 'dead'")
    fires_once(fleet, "dead_letters")

    [hook] = [r for r in fleet.receiver.requests if r.path == ALERT_HOOK_PATH]
    body = Webhook(WEBHOOK_SECRET).verify(hook.body, hook.headers)
    assert body == {
        "type": "alert.firing",
        "alert": "dead_letters",
        "status": "firing",
        "title": "Dead letters are waiting",
        "summary": "dead inbox events 1, action runs 0, hydration requests 0",
        "since": body["since"],
        "number": 1,
        "facts": {"inbox": 1, "actions": 0, "hydration": 0},
        "dashboard": "https://hooks.example/admin",
    }
    [slack] = [r for r in fleet.receiver.requests if r.path == ALERT_SLACK_PATH]
    assert slack.headers["content-type"] == "application/json; charset=utf-8"
    assert set(slack.json()) == {"text"}
    assert slack.json()["text"].startswith(":rotating_light: [FIRING] Dead letters are waiting")
    # The dead event holds an email address: counts are sent, never values.
    assert all(b"person1" not in r.body for r in fleet.receiver.requests)


def test_delivery_is_retried_through_the_outbox_and_a_dead_alert_does_not_alert(
    fleet: AlertFleet, store: Store
) -> None:
    fleet.receiver.fail_next(1, 503)  # Slack, first try
    store([numbered_event(1)])
    fleet.sql("UPDATE inbox_events SET status = 'dead'")
    fleet.run_loops()
    fleet.deliver()
    fleet.sql("UPDATE action_runs SET next_attempt_at = now() WHERE status = 'failed'")
    fleet.deliver()

    assert len(fleet.slack_texts()) == 2  # the 503, then the retry
    with fleet.engine.connect() as connection:
        runs = outbox.list_runs(connection, outbox.RunFilters(rule="alert:dead_letters"))
    assert sorted((r.portal_id, r.inbox_id, r.action, r.status) for r in runs) == [
        (0, -1, "slack", "done"),
        (0, -1, "webhook", "done"),
    ]
    # A dead alert run is a dead letter the dashboard lists, not another alert.
    fleet.sql("UPDATE action_runs SET status = 'dead'")
    fleet.run_loops()
    assert fleet.deliver() == 0
