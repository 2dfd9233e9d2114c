"""service.web.metrics and service.web.gauges, GET /metrics: the webhook's counters and the
gauges read from Postgres, after driving the real app with signed deliveries, a worker applying
them, the API client calling the fake HubSpot and a worker heartbeat; parsed with
prometheus_client's own parser."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from service import heartbeats, journal, outbox, portals
from service.events import Event, Kind
from service.hubspot.client import HubSpotApi
from service.settings import WEBHOOK_PATH
from service.web import gauges
from service.web.app import create_app
from service.web.gauges import queries
from service.worker.apply import Worker
from tests.factories import METRICS_TOKEN, PORTAL, action_run, change, hs, journal_read
from tests.fake_hubspot import FakeHubSpot
from tests.support import DbClock, MakeApi, free_port, make_settings, post, post_events, scrape

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
P = "hubspot_webhooks_"


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError (naming it) when the series is missing."""
    key = (P + name, frozenset(labels.items()))
    if key not in samples:
        raise KeyError(f"no series {name}{labels}")
    return samples[key]


def metrics_of(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return scrape(response.text)


def fail_inserts_of_event(engine: sa.Engine, event_id: int) -> None:
    """Make the inbox refuse one event, as a database in trouble would (the webhook answers 503)."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN IF NEW.event_id = {event_id} THEN RAISE EXCEPTION 'disk on fire';"
                " END IF; RETURN NEW; END $$"
            )
        )
        connection.execute(
            sa.text(
                "CREATE TRIGGER refuse_event BEFORE INSERT ON inbox_events"
                " FOR EACH ROW EXECUTE FUNCTION refuse_event()"
            )
        )


def allow_inserts(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TRIGGER refuse_event ON inbox_events"))
        connection.execute(sa.text("DROP FUNCTION refuse_event()"))


def test_every_series_carries_real_values_after_an_end_to_end_run(
    client: TestClient, engine: sa.Engine, worker: Worker, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    @worker.handlers.on("deals", Kind.PROPERTY_CHANGE, prop="dealstage")
    def stage_changed(event: Event, session: Session) -> None:
        raise KeyError("pipeline 'sales' not configured")

    first = [
        change("contact", 1, 1000, "email", "ada@example.com"),
        change("contact", 2, 1000, "email", "REDACTED"),  # asks for a hydration
        change("deal", 7, 1000, "dealstage", "closedwon"),  # its handler fails: dead
        hs("conversation.creation", 9, 1000),  # no handler: ignored
    ]
    # The webhook: stored, duplicate, 401, 400, 413, 503.
    assert post_events(client, first).json()["stored"] == 4
    assert post_events(client, first).json()["duplicates"] == 4
    assert client.post(WEBHOOK_PATH, content=b"[]").status_code == 401
    assert post(client, b"nope").status_code == 400
    assert client.post(WEBHOOK_PATH, content=b" " * (1024 * 1024 + 1)).status_code == 413
    refused = hs("contact.creation", 5, 1000)
    fail_inserts_of_event(engine, refused["eventId"])
    try:
        assert post_events(client, [refused]).status_code == 503
    finally:
        allow_inserts(engine)
    # The worker: one attempt allowed (the deal goes dead), then the default (a failed deal).
    Worker(engine, max_attempts=1, handlers=worker.handlers).drain()
    assert post_events(client, [change("deal", 8, 1000, "dealstage", "won")]).status_code == 200
    worker.drain()
    assert post_events(client, [change("contact", 3, 1000, "email", "b@example.com")]).is_success
    # The rest of the service: an action run, API calls (one 429), a portal to re-install,
    # a live worker.
    with engine.begin() as connection:
        outbox.enqueue(connection, [action_run(inbox_id=1)])
        connection.execute(
            sa.text(
                "INSERT INTO hubspot_tokens (portal_id, access_token, refresh_token, expires_at,"
                " needs_reinstall) VALUES (77002, 'a', 'r', now(), true)"
            )
        )
        heartbeats.beat(connection, "w1", host="host-a", pid=os.getpid(), stages=("apply",))
    fake.fail_next(1, status=429)
    api.batch_read(PORTAL, "contacts", [1], ["email"])

    samples = metrics_of(client)

    assert value(samples, "database_up") == 1
    deliveries = {
        ("200", "stored"): 3,
        ("200", "duplicate"): 1,
        ("200", "empty"): 0,
        ("401", "missing_signature"): 1,
        ("400", "invalid_body"): 1,
        ("413", "body_too_large"): 1,
        ("503", "storage_unavailable"): 1,
    }
    for (code, reason), count in deliveries.items():
        assert value(samples, "deliveries_total", code=code, reason=reason) == count, reason
    assert value(samples, "events_stored_total", subscription_type="contact.propertyChange") == 3
    assert value(samples, "events_stored_total", subscription_type="deal.propertyChange") == 2
    assert value(samples, "events_stored_total", subscription_type="conversation.creation") == 1
    assert value(samples, "events_duplicate_total") == 4
    assert value(samples, "ack_seconds_count") == 8
    assert 0 < value(samples, "ack_seconds_sum") < 8 * 5
    assert value(samples, "ack_seconds_bucket", le="+Inf") == 8

    inbox = {"done": 2, "ignored": 1, "dead": 1, "failed": 1, "pending": 1}
    for status, count in inbox.items():
        assert value(samples, "inbox_events", status=status) == count, status
    assert value(samples, "inbox_oldest_due_seconds") > 0
    assert value(samples, "apply_lag_events") == 3
    assert (
        0
        < value(samples, "apply_lag_seconds", quantile="0.5")
        <= value(samples, "apply_lag_seconds", quantile="0.99")
    )
    assert value(samples, "hydration_requests", status="pending") == 1
    assert value(samples, "hydration_requests", status="dead") == 0
    runs = {"pending": 1, "failed": 0, "dead": 0, "done": 0}
    for status, count in runs.items():
        assert value(samples, "action_runs", status=status) == count, status
    assert value(samples, "dead_letters", kind="inbox") == 1
    assert value(samples, "dead_letters", kind="actions") == 0
    assert value(samples, "dead_letters", kind="hydration") == 0

    assert value(samples, "hubspot_api_calls_total", endpoint="batch_read", outcome="429") == 1
    assert value(samples, "hubspot_api_calls_total", endpoint="batch_read", outcome="ok") == 1
    assert 0 <= value(samples, "hubspot_api_last_429_seconds", endpoint="batch_read") < 60
    assert value(samples, "hubspot_api_calls_recent", endpoint="batch_read", outcome="429") == 1
    assert value(samples, "hubspot_api_calls_recent", endpoint="batch_read", outcome="ok") == 1
    remaining = value(samples, "rate_limit_remaining", portal=str(PORTAL), bucket="api")
    assert 0 < remaining <= 100 - 2
    assert value(samples, "rate_limit_blocked_seconds", portal=str(PORTAL), bucket="api") >= 0
    assert value(samples, "portals_needing_reinstall") == 1
    assert value(samples, "workers_live") == 1
    assert 0 < value(samples, "scrape_database_seconds") < 5


def test_recent_api_calls_are_those_of_the_last_five_minutes(
    client: TestClient, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    api = make_api(limiter_sleep=DbClock(engine))
    fake.fail_next(2, status=429)
    api.batch_read(PORTAL, "contacts", [1], ["email"])  # 429, 429, ok
    # Six minutes pass (moved in the database, not slept).
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE hubspot_api_call_minutes SET minute = minute - interval '6 minutes'")
        )
    fake.fail_next(1, status=429)
    api.batch_read(PORTAL, "contacts", [1], ["email"])  # 429, ok

    samples = metrics_of(client)

    assert value(samples, "hubspot_api_calls_recent", endpoint="batch_read", outcome="429") == 1
    assert value(samples, "hubspot_api_calls_recent", endpoint="batch_read", outcome="ok") == 1
    assert value(samples, "hubspot_api_calls_total", endpoint="batch_read", outcome="429") == 3
    assert value(samples, "hubspot_api_calls_total", endpoint="batch_read", outcome="ok") == 2


def test_no_live_worker_shows_as_zero(client: TestClient, engine: sa.Engine) -> None:
    with engine.begin() as connection:
        heartbeats.beat(connection, "gone", host="host-a", pid=1, stages=("apply",))
        connection.execute(
            sa.text("UPDATE worker_heartbeats SET last_seen_at = now() - interval '31 seconds'")
        )

    assert value(metrics_of(client), "workers_live") == 0


def test_paused_portals_are_counted(client: TestClient, engine: sa.Engine) -> None:
    assert value(metrics_of(client), "portals_paused") == 0
    with engine.begin() as connection:
        portals.pause(connection, PORTAL, "bulk import")
        portals.pause(connection, 7)
        portals.pause(connection, 8)
        portals.resume(connection, 8)

    assert value(metrics_of(client), "portals_paused") == 2


def test_known_answers_are_exported_at_zero_before_any_delivery(client: TestClient) -> None:
    samples = metrics_of(client)

    assert value(samples, "deliveries_total", code="200", reason="stored") == 0
    assert value(samples, "deliveries_total", code="401", reason="bad_signature") == 0
    assert value(samples, "inbox_events", status="pending") == 0
    assert value(samples, "apply_lag_seconds", quantile="0.99") == 0


def test_with_metrics_token_a_missing_or_wrong_bearer_is_refused(
    metrics_client: TestClient,
) -> None:
    missing = metrics_client.get("/metrics")
    wrong = metrics_client.get("/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
    basic = metrics_client.get("/metrics", headers={"Authorization": f"Basic {METRICS_TOKEN}"})

    assert (missing.status_code, missing.json()["reason"]) == (401, "missing_token")
    assert (wrong.status_code, wrong.json()["reason"]) == (401, "bad_token")
    assert (basic.status_code, basic.json()["reason"]) == (401, "missing_token")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert METRICS_TOKEN not in wrong.text
    samples = metrics_of(metrics_client, Authorization=f"Bearer {METRICS_TOKEN}")
    assert value(samples, "database_up") == 1


def test_two_apps_in_one_process_keep_their_own_counters(
    client: TestClient, metrics_client: TestClient
) -> None:
    assert post_events(client, [hs("contact.creation", 1, 1000)]).status_code == 200

    mine = metrics_of(client)
    other = metrics_of(metrics_client, Authorization=f"Bearer {METRICS_TOKEN}")

    assert value(mine, "deliveries_total", code="200", reason="stored") == 1
    assert value(other, "deliveries_total", code="200", reason="stored") == 0
    assert value(other, "inbox_events", status="pending") == 1, "the gauges read one database"


def test_a_database_that_does_not_answer_is_database_up_zero_not_a_failed_scrape() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    with TestClient(create_app(make_settings(), database_url=url)) as down:
        samples = metrics_of(down)

    assert value(samples, "database_up") == 0
    assert value(samples, "deliveries_total", code="200", reason="stored") == 0
    assert not any(name == P + "inbox_events" for name, _ in samples)


def test_the_size_estimate_of_the_partitioned_inbox_sums_its_partitions(
    client: TestClient, engine: sa.Engine
) -> None:
    # The estimate spares a scrape counting a large table's done rows; a partitioned table has
    # no pages of its own, so it must come from its partitions, or every scrape counts.
    assert post_events(client, [hs("contact.creation", n, 1000) for n in range(1, 41)]).is_success
    with engine.begin() as connection:
        connection.execute(sa.text("ANALYZE inbox_events"))
        [(_, estimate, params)] = [q for q in queries() if q[0] == "inbox_events size estimate"]
        assert connection.execute(estimate, params).scalar_one() == 40


def test_push_only_deployments_show_no_journal_series(client: TestClient) -> None:
    samples = metrics_of(client)

    assert value(samples, "database_up") == 1
    assert not [name for name, _ in samples if name.startswith(P + "journal")]


def test_the_journal_reader_is_reported_by_journal(client: TestClient, engine: sa.Engine) -> None:
    with engine.begin() as connection:
        journal_read(connection, "global", ["stored", "stored", "failed", "stored"])
        journal.note_latest(connection, "global", latest_offset="global-11", behind=7)
        journal.note_error(connection, "global", "HubSpotUnavailable: HubSpot answered 503")
        journal.note_error(connection, "global", "HubSpotUnavailable: HubSpot answered 503")
        for reason in ("offset_expired", "file_expired"):
            gap = journal.record_gap(
                connection,
                "global",
                reason=reason,
                since_ms=1,
                until_ms=2,
                from_offset="global-1",
                to_offset=None,
            )
        journal.gap_reconciled(connection, gap)
        # A second journal whose reader has only looked at the journal, knowing nothing yet.
        journal.note_latest(connection, f"local:{PORTAL}", latest_offset=None, behind=None)

    samples = metrics_of(client)

    assert value(samples, "journal_behind_entries", journal="global") == 7
    assert 0 <= value(samples, "journal_last_entry_age_seconds", journal="global") < 60
    assert value(samples, "journal_entries", journal="global", status="stored") == 3
    assert value(samples, "journal_entries", journal="global", status="failed") == 1
    assert value(samples, "journal_gaps_open", journal="global") == 1
    assert value(samples, "journal_errors_total", journal="global") == 2
    local = f"local:{PORTAL}"
    assert value(samples, "journal_entries", journal=local, status="stored") == 0
    assert value(samples, "journal_gaps_open", journal=local) == 0
    assert value(samples, "journal_errors_total", journal=local) == 0
    for unknown in ("journal_behind_entries", "journal_last_entry_age_seconds"):
        assert (P + unknown, frozenset({("journal", local)})) not in samples


def test_stored_journal_entries_of_a_large_table_come_from_its_size_estimate(
    client: TestClient, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.begin() as connection:
        journal_read(connection, "global", ["stored"] * 5 + ["failed"])
        connection.execute(sa.text("ANALYZE journal_entries"))
    # Six rows count as "large" here; the estimate is then the table's statistics, not a count.
    monkeypatch.setattr(gauges, "EXACT_COUNT_BELOW", 6)

    samples = metrics_of(client)

    assert value(samples, "journal_entries", journal="global", status="stored") == 5
    assert value(samples, "journal_entries", journal="global", status="failed") == 1
    [(_, estimate, params)] = [q for q in queries() if q[0] == "journal_entries size estimate"]
    with engine.connect() as connection:
        assert connection.execute(estimate, params).scalar_one() == 6
